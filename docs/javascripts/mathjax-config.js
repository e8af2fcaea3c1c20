// MathJax 3 configuration for pymdownx.arithmatex (generic mode): typeset only the elements it
// marks with class "arithmatex". Must load before docs/javascripts/mathjax/tex-chtml.js.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
