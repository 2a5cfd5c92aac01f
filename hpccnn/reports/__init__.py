"""python -m hpccnn.report: a grid's or a folder's runs as one report (Markdown and HTML). Imports training's run folders and figures; nothing imports it."""
