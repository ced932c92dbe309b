// The account usage page's two charts (templates/accounts/usage.html), from the page's
// #usage-data; the series' names (shown in each point's tooltip) come from the JavaScript
// catalog (/jsi18n/, loaded before this file).
(function () {
  const data = JSON.parse(document.getElementById("usage-data").textContent);
  const draw = (id, label, values, type) => new Chart(document.getElementById(id), {
    type: type, data: {labels: data.labels, datasets: [{label: label, data: values}]},
    options: {animation: false, maintainAspectRatio: false, plugins: {legend: {display: false}}, scales: {y: {beginAtZero: true}}}
  });
  draw("chart-requests", gettext("requests"), data.requests, "bar");
  draw("chart-cost", gettext("cost"), data.cost, "line");
  document.body.dataset.chartsReady = "yes";
})();
