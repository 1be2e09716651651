% # The form. The inputs say step="any" and min="0" so that the browser lets any positive decimal through and the
% # API, the one place where the validation rules live, decides.
% rebase("layout.tpl", title=title, stylesheet=stylesheet)
  <h1>Which iris is this?</h1>
  <p class="lead">Enter four measurements of one flower, in centimetres, and the model names its species.</p>
  <p class="examples">Or start from a typical
  % for i, (species, link) in enumerate(examples):
    <a href="{{link}}">{{species}}</a>{{"," if i < len(examples) - 2 else (" or" if i == len(examples) - 2 else ".")}}
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
  <form action="/prediction" method="get" class="measurements">
  % for name, (label, low, high) in fields:
    <div class="field{{" invalid" if name in errors else ""}}">
      <label for="{{name}}">{{label}} <span class="unit">(cm)</span></label>
      % if name in errors:
      <input id="{{name}}" name="{{name}}" type="number" inputmode="decimal" step="any" min="0" required
             value="{{values.get(name, "")}}" aria-invalid="true" aria-describedby="{{name}}-hint {{name}}-error">
      <p class="error" id="{{name}}-error">{{label}} {{errors[name]}}</p>
      % else:
      <input id="{{name}}" name="{{name}}" type="number" inputmode="decimal" step="any" min="0" required
             value="{{values.get(name, "")}}" aria-describedby="{{name}}-hint">
      % end
      <p class="hint" id="{{name}}-hint">Typically {{low}} to {{high}} cm</p>
    </div>
  % end
    <button type="submit">Predict the species</button>
  </form>
