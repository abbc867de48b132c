// kdatlas: sort the tables inside .kd-sortable by a click on a column header. No dependencies.
// A cell sorts by its first number ("0.291 ± 0.020" → 0.291; "—" last), else by its text.
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    var match = text.replace("−", "-").match(/^[+-]?\d+(\.\d+)?(e[+-]?\d+)?/i);
    return match ? parseFloat(match[0]) : text === "—" ? null : text.toLowerCase();
  }
  function compare(a, b) {
    if (a === b) return 0;
    if (a === null) return 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : 1;
    return typeof a === "number" ? -1 : 1;
  }
  function setUp() {
    document.querySelectorAll(".kd-sortable table").forEach(function (table) {
      if (table.dataset.sortable) return;
      table.dataset.sortable = "1";
      var headers = table.tHead ? table.tHead.rows[0].cells : [];
      Array.prototype.forEach.call(headers, function (header, column) {
        header.style.cursor = "pointer";
        header.title = "Sort by this column";
        header.addEventListener("click", function () {
          var body = table.tBodies[0];
          var rows = Array.prototype.slice.call(body.rows);
          var ascending = header.dataset.order !== "ascending";
          Array.prototype.forEach.call(headers, function (h) { delete h.dataset.order; h.removeAttribute("aria-sort"); });
          header.dataset.order = ascending ? "ascending" : "descending";
          header.setAttribute("aria-sort", header.dataset.order);
          rows.sort(function (x, y) {
            var order = compare(key(x.cells[column]), key(y.cells[column]));
            return ascending ? order : -order;
          });
          rows.forEach(function (row) { body.appendChild(row); });
        });
      });
    });
  }
  // Material's instant navigation swaps pages without a reload: set up on every page it shows.
  if (typeof document$ !== "undefined") document$.subscribe(setUp);
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
