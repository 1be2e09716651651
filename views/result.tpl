% # The answer: the species, a bar chart of the probabilities (inline SVG, no script), and the measurements.
% rebase("layout.tpl", title=title, stylesheet=stylesheet)
  <p class="eyebrow">The model says this is</p>
  <h1 class="species">Iris {{answer["prediction"]}}</h1>
  <p class="lead">with a probability of {{percent(answer["probabilities"][answer["prediction"]])}}.</p>
  % if answer["warnings"]:
  <div class="alert" role="note">
    <p><strong>Take this answer with care.</strong> Some measurements lie outside what the model was trained on:</p>
    <ul>
    % for warning in answer["warnings"]:
      <li>{{warning}}</li>
    % end
    </ul>
  </div>
  % end
  <h2>Probabilities</h2>
  <ul class="chart">
  % for species, probability in answer["probabilities"].items():
    <li class="{{"best" if species == answer["prediction"] else "other"}}">
      <span class="label">{{species}}</span>
      <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">
        <rect class="track" width="100" height="10"></rect>
        <rect class="fill" width="{{"%.2f" % (100 * probability)}}" height="10"></rect>
      </svg>
      <span class="value">{{percent(probability)}}</span>
    </li>
  % end
  </ul>
  <h2>Measurements</h2>
  <dl class="measured">
  % for name, (label, low, high) in fields:
    <dt>{{label}}</dt><dd>{{"%g" % answer["features"][name]}} cm</dd>
  % end
  </dl>
  <p class="actions"><a class="button" href="{{edit_link}}">Change these measurements</a> <a href="/">Start again</a></p>
  <p class="meta">Model {{answer["model"]["name"]}}, version {{answer["model"]["version"]}}</p>
