<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · {{texts["title"]}}</title>
<meta name="description" content="{{description}}">
<link rel="stylesheet" href="{{stylesheet}}">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<header class="top"><a href="/" class="brand">{{texts["title"]}}</a></header>
<main>
{{!base}}</main>
% if "source" in texts:
<footer><p>Predictions from a scikit-learn model trained on {{texts["source"]}}.</p></footer>
% else:
<footer><p>Predictions from a scikit-learn model.</p></footer>
% end
</body>
</html>
