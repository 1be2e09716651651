% # The answer: the class, a bar chart of the probabilities (inline SVG, no script), why (each value entered, with how
% # far it moved the answer; the page's one list of the values) and the most similar rows of the training data.
% rebase("layout.tpl", title=title, stylesheet=stylesheet, texts=texts, description=description)
  <p class="eyebrow">The model says this is</p>
  <h1 class="answer">{{label}}</h1>
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
  <h2>Why</h2>
  <p>How far each value moved the probability of {{label}}, in percentage points, compared with the training data's
  typical value: + toward this answer, − away from it. Largest first.</p>
  <ul class="why">
  % for entered, points in why:
    <li class="{{"toward" if points >= 0 else "away"}}">
      <span class="label">{{entered}}</span>
      <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">
        <rect class="track" width="100" height="10"></rect>
        <rect class="fill" width="{{"%.2f" % min(100, abs(points))}}" height="10"></rect>
      </svg>
      <span class="value">{{"%+.1f" % points}} points</span>
    </li>
  % end
  </ul>
  % if answer["neighbours"]:
  <h2 id="similar">Most similar in the training data</h2>
  % # Focusable and named, so that a keyboard can scroll the table sideways on a narrow screen (WCAG 2.1.1).
  <div class="table-scroll" tabindex="0" role="region" aria-labelledby="similar">
  <table class="neighbours">
    <thead><tr><th scope="col">Class</th>
    % for item in inputs:
      <th scope="col">{{item["label"]}}</th>
    % end
      <th scope="col">Distance</th></tr></thead>
    <tbody>
    % for neighbour in answer["neighbours"]:
      <tr><td>{{neighbour["class"]}}</td>
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
