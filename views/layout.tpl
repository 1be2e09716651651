<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · Iris classifier</title>
<link rel="stylesheet" href="{{stylesheet}}">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<header class="top"><a href="/" class="brand">Iris classifier</a></header>
<main>
{{!base}}</main>
<footer><p>Predictions from a scikit-learn model trained on Fisher's iris data.</p></footer>
</body>
</html>
