% # The form, made from the model's inputs (GET /api/v1.0/model). A number input says step="any" (and the smallest
% # value its rule allows, if any) so that the browser lets any decimal through and the API, the one place where
% # the validation rules live, decides; a category is a <select> of its categories, or, for one of many levels (open),
% # a text input that suggests its frequent levels; a date is a date input (a date-time, a datetime-local one).
% rebase("layout.tpl", title=title, stylesheet=stylesheet, texts=texts, description=description)
  <h1>{{texts["question"]}}</h1>
  <p class="lead">{{texts["lead"]}}</p>
  % if task == "regression":
  <p class="examples">Or start from a training row whose {{target["label"]}} is
  % else:
  <p class="examples">Or start from a typical
  % end
  % for i, (name, link) in enumerate(examples):
    <a href="{{link}}">{{name}}</a>{{"," if i < len(examples) - 2 else (" or" if i == len(examples) - 2 else ".")}}
  % end
  </p>
  % if general_errors:
  <div class="alert" role="alert">
    <p>The service could not use this request:</p>
    <ul>
    % for message in general_errors:
      <li>{{message}}</li>
    % end
    </ul>
  </div>
  % end
  <form action="/prediction" method="get" class="inputs">
  % for item in inputs:
  %   name, invalid = item["name"], item["name"] in errors
  %   described = f"{name}-hint {name}-error" if invalid else f"{name}-hint"
  %   lowest = item.get("allowed", {}).get("minimum", item.get("allowed", {}).get("exclusiveMinimum"))
    <div class="field{{" invalid" if invalid else ""}}">
      <label for="{{name}}">{{item["label"]}}
      % if item["unit"]:
        <span class="unit">({{item["unit"]}})</span>
      % end
      % if item.get("optional"):
        <span class="unit">(optional)</span>
      % end
      </label>
      % required = "" if item.get("optional") else " required"
      % if item["kind"] == "category" and item.get("open"):
      <input id="{{name}}" name="{{name}}" type="text" list="{{name}}-levels" maxlength="200"{{required}}
             value="{{values.get(name, "")}}"{{!' aria-invalid="true"' if invalid else ""}} aria-describedby="{{described}}">
      <datalist id="{{name}}-levels">
        % for category in item["categories"]:
        <option value="{{category}}"></option>
        % end
      </datalist>
      % elif item["kind"] == "date":
      <input id="{{name}}" name="{{name}}" type="{{"datetime-local" if item.get("format") == "date-time" else "date"}}"{{!' step="1"' if item.get("format") == "date-time" else ""}}{{required}}
             value="{{values.get(name, "")}}"{{!' aria-invalid="true"' if invalid else ""}} aria-describedby="{{described}}">
      % elif item["kind"] == "category":
      <select id="{{name}}" name="{{name}}"{{required}}{{!' aria-invalid="true"' if invalid else ""}} aria-describedby="{{described}}">
        <option value="">{{"Not given" if item.get("optional") else "Choose…"}}</option>
        % for category in item["categories"]:
        <option{{!" selected" if values.get(name) == category else ""}}>{{category}}</option>
        % end
      </select>
      % else:
      <input id="{{name}}" name="{{name}}" type="number" inputmode="decimal" step="any"{{!"" if lowest is None else ' min="%s"' % value_text(lowest)}}{{required}}
             value="{{values.get(name, "")}}"{{!' aria-invalid="true"' if invalid else ""}} aria-describedby="{{described}}">
      % end
      % if invalid:
      <p class="error" id="{{name}}-error">{{item["label"]}} {{errors[name]}}</p>
      % end
      <p class="hint" id="{{name}}-hint">{{item["hint"]}}</p>
    </div>
  % end
    <button type="submit">{{texts["submit"]}}</button>
  </form>
