% # For the people who run the model: drift of each input and of the answers (live shares beside the training's, as
% # pairs of bars: inline SVG, no script), live accuracy from feedback, and the traffic each version answered. Every
% # number is the API's (GET /api/v1.0/monitoring); tabserve/watchview.py prepares them.
% rebase("layout.tpl", title=title, stylesheet=stylesheet, texts=texts, description=description)
  <p class="eyebrow">Monitoring</p>
  <h1>Model {{view["model"]["name"]}}, version {{view["model"]["version"]}}</h1>
  <p class="lead">How live traffic compares with what the model learnt from, {{span}}.</p>
  <p class="spans">
  % for text, link, current in spans:
  %   if current:
    <strong aria-current="page">{{text}}</strong>
  %   else:
    <a href="{{link}}">{{text}}</a>
  %   end
  % end
  </p>
  <h2>Drift</h2>
% if view["no_drift"]:
  <p>{{view["no_drift"]}}.</p>
% else:
  <p>The population stability index (PSI) of each input's live values against the training data's: below
  {{view["thresholds"]["psi"][0]}} stable, up to {{view["thresholds"]["psi"][1]}} moderate, above it drifted; judged
  once {{view["thresholds"]["min_count"]}} values have come.</p>
  <div class="table-scroll" tabindex="0" role="region" aria-labelledby="drift-summary">
  <table class="summary">
    <caption id="drift-summary">Drift by input</caption>
    <thead><tr><th scope="col">Input</th><th scope="col">Values</th><th scope="col">PSI</th><th scope="col">Verdict</th></tr></thead>
    <tbody>
    % for figure in [*view["inputs"], view["output"]]:
      <tr><th scope="row">{{figure["title"]}}</th><td>{{figure["count"]}}</td><td class="psi">{{figure["psi"]}}</td>
      <td><span class="verdict {{figure["colour"]}}">{{figure["verdict"]}}</span></td></tr>
    % end
    </tbody>
  </table>
  </div>
  <p class="legend"><span class="key reference"></span> training data <span class="key live"></span> live</p>
  % for figure in [view["output"], *view["inputs"]]:
  <section class="drift" aria-label="{{figure["title"]}}">
    <h3>{{figure["title"]}} <span class="verdict {{figure["colour"]}}">{{figure["verdict"]}}</span></h3>
    <p class="meta">PSI {{figure["psi"]}} over {{figure["count"]}} values</p>
    <ul class="bins">
    % for label, reference, live, reference_length, live_length in figure["bins"]:
      <li>
        <span class="label">{{label}}</span>
        <svg class="pair" viewBox="0 0 100 12" preserveAspectRatio="none" aria-hidden="true" focusable="false">
          <rect class="reference" width="{{"%.2f" % reference_length}}" height="5.5"></rect>
          <rect class="live" y="6.5" width="{{"%.2f" % live_length}}" height="5.5"></rect>
        </svg>
        <span class="value"><span class="hidden">training </span>{{reference}} → <span class="hidden">live </span>{{live}}</span>
      </li>
    % end
    </ul>
  </section>
  % end
% end
  <h2>Live accuracy</h2>
% count, rows = view["feedback"]
% if count:
  <p>From {{count}} answers whose truth clients sent back (<code>POST /api/v1.0/feedback</code>).</p>
  <div class="table-scroll" tabindex="0" role="region" aria-labelledby="feedback-table">
  <table class="summary">
    <caption id="feedback-table">Live figures beside the held-out ones of training</caption>
    <thead><tr><th scope="col">Figure</th><th scope="col">Live</th><th scope="col">At training</th></tr></thead>
    <tbody>
    % for what, live, training in rows:
      <tr><th scope="row">{{what}}</th><td>{{live}}</td><td>{{training}}</td></tr>
    % end
    </tbody>
  </table>
  </div>
% else:
  <p>No feedback yet: clients send the truth they learn after an answer to <code>POST /api/v1.0/feedback</code>.</p>
% end
  <h2>Traffic</h2>
% if view["traffic"]:
  <ul class="chart traffic">
  % for version, answered, share, length in view["traffic"]:
    <li>
      <span class="label">{{version}}</span>
      <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">
        <rect class="track" width="100" height="10"></rect>
        <rect class="fill" width="{{"%.2f" % length}}" height="10"></rect>
      </svg>
      <span class="value">{{share}} ({{answered}})</span>
    </li>
  % end
  </ul>
% else:
  <p>No prediction answered yet.</p>
% end
  <p class="meta">Figures from the API's <code>GET /api/v1.0/monitoring</code>; each worker adds its counts every second.</p>
