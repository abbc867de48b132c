// kdatlas catalogue: filter the table rows by their data-* attributes. No dependencies.
// Filters are mirrored in the query string so that a filtered view can be linked.
(function () {
  function setUp() {
    var table = document.querySelector(".kd-catalogue table");
    if (!table || table.dataset.ready) return;
    table.dataset.ready = "1";
    var controls = Array.prototype.slice.call(document.querySelectorAll("[data-filter]"));
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var counter = document.querySelector(".kd-count");
    var params = new URLSearchParams(window.location.search);

    controls.forEach(function (control) {
      var wanted = params.get(control.dataset.filter);
      if (wanted !== null) control.value = wanted;
    });

    function matches(row, control) {
      var value = control.value.trim().toLowerCase();
      if (!value) return true;
      var name = control.dataset.filter;
      if (name === "text") return row.textContent.toLowerCase().indexOf(value) !== -1;
      var field = (row.dataset[name] || "").toLowerCase();
      if (name === "tag") return field.split(" ").indexOf(value) !== -1;
      if (name === "branch") return field === value || field.indexOf(value + "/") === 0;
      return field === value;
    }

    function apply() {
      var shown = 0;
      rows.forEach(function (row) {
        var visible = controls.every(function (control) { return matches(row, control); });
        row.hidden = !visible;
        if (visible) shown += 1;
      });
      if (counter) counter.textContent = shown + " of " + rows.length + " entries";
      var query = new URLSearchParams();
      controls.forEach(function (control) {
        if (control.value) query.set(control.dataset.filter, control.value);
      });
      var search = query.toString();
      history.replaceState(null, "", window.location.pathname + (search ? "?" + search : "") + window.location.hash);
    }

    controls.forEach(function (control) {
      control.addEventListener(control.tagName === "INPUT" ? "input" : "change", apply);
    });
    apply();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
