% # The answer: a class with a bar chart of the probabilities, or a number with its interval drawn on the scale of
% # the training data (inline SVG, no script); why (each value entered, with how far it moved the answer; the page's
% # one list of the values) and the most similar rows of the training data.
% rebase("layout.tpl", title=title, stylesheet=stylesheet, texts=texts, description=description)
% if task == "regression":
  <p class="eyebrow">The model predicts</p>
  <h1 class="answer number">{{label}}</h1>
  % if picture:
  <p class="lead">{{target["label"]}}, and for {{picture["level"]}} of rows like the training data the true value lies
  in its interval, {{picture["interval"]}}.</p>
  % else:
  <p class="lead">{{target["label"]}}, with no interval: this model could not be calibrated.</p>
  % end
% else:
  <p class="eyebrow">The model says this is</p>
  <h1 class="answer">{{label}}</h1>
  <p class="lead">with a probability of {{percent(answer["probabilities"][answer["prediction"]])}}.</p>
% end
  % if answer["warnings"]:
  <div class="alert" role="note">
    <p><strong>Take this answer with care.</strong> Some values lie outside what the model was trained on:</p>
    <ul>
    % for warning in answer["warnings"]:
      <li>{{warning}}</li>
    % end
    </ul>
  </div>
  % end
% if task == "regression" and picture:
  <h2>Interval</h2>
  <figure class="interval">
    <svg class="scale" viewBox="0 0 100 24" preserveAspectRatio="none" aria-hidden="true" focusable="false">
      <rect class="track" x="0" y="9" width="100" height="6"></rect>
      <rect class="range" x="{{"%.2f" % picture["range"][0]}}" y="9" width="{{"%.2f" % picture["range"][1]}}" height="6"></rect>
      <rect class="band" x="{{"%.2f" % picture["band"][0]}}" y="4" width="{{"%.2f" % picture["band"][1]}}" height="16"></rect>
      <rect class="marker" x="{{"%.2f" % picture["marker"]}}" y="0" width="{{"%.2f" % picture["marker_width"]}}" height="24"></rect>
    </svg>
    <p class="ends"><span>{{picture["ends"][0]}}</span><span>{{picture["ends"][1]}}</span></p>
    <figcaption>The prediction {{label}} (the line), its {{picture["level"]}} interval {{picture["interval"]}} (the
    band), and the {{picture["training"]}} of {{target["label"]}} in the training data (the darker track).</figcaption>
  </figure>
% elif task != "regression":
  <h2>Probabilities</h2>
  <ul class="chart">
  % for name, probability in answer["probabilities"].items():
    <li class="{{"best" if name == answer["prediction"] else "other"}}">
      <span class="label">{{name}}</span>
      <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">
        <rect class="track" width="100" height="10"></rect>
        <rect class="fill" width="{{"%.2f" % (100 * probability)}}" height="10"></rect>
      </svg>
      <span class="value">{{percent(probability)}}</span>
    </li>
  % end
  </ul>
% end
  <h2>Why</h2>
% if task == "regression":
  <p>How far each value moved the prediction, in {{target.get("unit") or target["label"]}}, compared with the training
  data's typical value: + up, − down. Largest first; a bar's length is measured against the training range.</p>
% else:
  <p>How far each value moved the probability of {{label}}, in percentage points, compared with the training data's
  typical value: + toward this answer, − away from it. Largest first.</p>
% end
  <ul class="why">
  % for entered, length, words, positive in why:
    <li class="{{"toward" if positive else "away"}}">
      <span class="label">{{entered}}</span>
      <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">
        <rect class="track" width="100" height="10"></rect>
        <rect class="fill" width="{{"%.2f" % length}}" height="10"></rect>
      </svg>
      <span class="value">{{words}}</span>
    </li>
  % end
  </ul>
  % if answer["neighbours"]:
  <h2 id="similar">Most similar in the training data</h2>
  % # Focusable and named, so that a keyboard can scroll the table sideways on a narrow screen (WCAG 2.1.1).
  <div class="table-scroll" tabindex="0" role="region" aria-labelledby="similar">
  <table class="neighbours">
    <thead><tr><th scope="col">{{target["label"].capitalize() if task == "regression" else "Class"}}</th>
    % for item in inputs:
      <th scope="col">{{item["label"]}}</th>
    % end
      <th scope="col">Distance</th></tr></thead>
    <tbody>
    % for neighbour in answer["neighbours"]:
      <tr><td>{{number_text(neighbour["target"]) if task == "regression" else neighbour["class"]}}</td>
      % for item in inputs:
      %   value = neighbour["features"].get(item["name"])
        <td>{{value_text(value)}}</td>
      % end
        <td>{{"%g" % neighbour["distance"]}}</td></tr>
    % end
    </tbody>
  </table>
  </div>
  % end
  <p class="actions"><a class="button" href="{{edit_link}}">{{texts["change"]}}</a> <a href="/">Start again</a></p>
  <p class="meta">Model {{answer["model"]["name"]}}, version {{answer["model"]["version"]}}</p>
