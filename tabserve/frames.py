"""Models fitted on a pandas DataFrame get their rows as one, with the column names they were fitted with.

    columns = frame_columns(estimator, labels)      # train.py: the names it was fitted with, or None (no frame)
    make_frame = frame_maker(inputs, columns)       # rows -> a DataFrame of those columns, in their order

A pipeline written in a notebook selects its columns by name (make_column_transformer(..., ["island", "sex"])) and
fails on a NumPy array; scikit-learn, XGBoost and LightGBM record those names as feature_names_in_. They are the
table's own column names as written (the inputs' labels), before train.py normalises them into feature names. pandas
is imported here only, and only for such a model: the default model never loads it.
"""


class FrameError(ValueError):
    """A model fitted on columns the table does not have."""


def frame_columns(estimator, labels):
    """The column names the estimator was fitted with, if it was fitted on a DataFrame; FrameError when they are
    not the table's (labels: the table's column names as written)."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return None
    names = [str(name) for name in names]
    if set(names) != set(labels):
        missing, extra = sorted(set(names) - set(labels)), sorted(set(labels) - set(names))
        raise FrameError(f"was fitted on the columns {', '.join(names)}; the table "
                         + (f"lacks {', '.join(missing)}" if missing else "")
                         + ("; " if missing and extra else "")
                         + (f"has {', '.join(extra)} too (--drop them)" if extra else ""))
    return names


def frame_maker(inputs, columns):
    """A function of rows (inputs: [(label, kind)] in their order) that returns them as a DataFrame of these columns,
    in this order: numbers as float64, categories as objects, a missing value as NaN."""
    import pandas  # only a model fitted on a DataFrame gets here

    labels = [label for label, _ in inputs]
    places = [(column, labels.index(column), inputs[labels.index(column)][1] == "number") for column in columns]

    def make_frame(rows):
        return pandas.DataFrame({column: rows[:, index].astype(float) if number else rows[:, index]
                                 for column, index, number in places})

    return make_frame
