window.harness = {
  plot: function (id, figure) {
    var draw = function () {
      var el = document.getElementById(id);
      Plotly.newPlot(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
      el.on("plotly_click", function (event) {
        var data = event.points[0].customdata;
        if (Array.isArray(data) && typeof data[4] === "string") { window.location.href = data[4]; }
      });
    };
    if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
  }
};
