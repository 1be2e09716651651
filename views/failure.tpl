% # When no answer can be shown: the API unavailable or failing, a page that does not exist.
% rebase("layout.tpl", title=title, stylesheet=stylesheet, texts=texts, description=description)
  <h1>{{heading}}</h1>
  <p class="lead">{{advice}}</p>
  <p class="actions">
  % if retry_link:
    <a class="button" href="{{retry_link}}">Try again</a>
  % end
    <a href="/">Back to the form</a>
  </p>
