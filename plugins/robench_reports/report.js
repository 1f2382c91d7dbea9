/* robench HTML leaderboard: click a header to sort, type to filter.  Plain ES5 so that the
   file works in any browser, opened straight from disk; inlined, nothing fetched.
   Rows are grouped by test set (one tbody each, under its header row); sorting reorders
   rows inside each group, because accuracies on different test sets are not comparable. */
(function () {
  "use strict";
  var table = document.getElementById("board");
  if (!table) { return; }
  var blocks = Array.prototype.slice.call(table.tBodies);
  var headers = table.tHead.rows[0].cells;
  var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr[data-model]"));
  rows.forEach(function (row, index) { row.setAttribute("data-index", String(index)); });

  function dataRows(block) {
    return Array.prototype.slice.call(block.rows).filter(function (row) {
      return row.hasAttribute("data-model");
    });
  }

  function sortKey(cell, numeric) {
    var value = cell.getAttribute("data-v");
    if (value === null) { value = cell.textContent; }
    if (numeric) {
      var number = value === "" ? NaN : parseFloat(value);
      return isNaN(number) ? null : number;
    }
    return value.toLowerCase();
  }

  function sortBy(column, ascending) {
    var numeric = headers[column].getAttribute("data-type") === "num";
    blocks.forEach(function (block) {
      var keyed = dataRows(block).map(function (row) {
        return { row: row, key: sortKey(row.cells[column], numeric),
                 index: Number(row.getAttribute("data-index")) };
      });
      keyed.sort(function (a, b) {
        /* missing values last in either direction; ties keep the leaderboard order */
        if (a.key === null || b.key === null) {
          if (a.key === b.key) { return a.index - b.index; }
          return a.key === null ? 1 : -1;
        }
        var order = a.key < b.key ? -1 : (a.key > b.key ? 1 : 0);
        if (!ascending) { order = -order; }
        return order !== 0 ? order : a.index - b.index;
      });
      keyed.forEach(function (item) { block.appendChild(item.row); });
    });
    for (var i = 0; i < headers.length; i++) { headers[i].removeAttribute("aria-sort"); }
    headers[column].setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  Array.prototype.forEach.call(headers, function (header, column) {
    function activate() {
      var current = header.getAttribute("aria-sort");
      /* numbers start high-to-low (best first), text starts A-to-Z */
      var ascending = current ? current !== "ascending"
                              : header.getAttribute("data-type") !== "num";
      sortBy(column, ascending);
    }
    header.addEventListener("click", activate);
    header.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(); }
    });
  });

  var filter = document.getElementById("filter");
  var count = document.getElementById("count");
  function applyFilter() {
    var terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    blocks.forEach(function (block) {
      var here = 0;
      dataRows(block).forEach(function (row) {
        var text = (row.textContent + " " + (row.cells[1].getAttribute("title") || "") + " "
                    + block.getAttribute("data-domain") + " "
                    + block.getAttribute("data-dataset")).toLowerCase();
        var keep = terms.every(function (term) { return text.indexOf(term) !== -1; });
        row.hidden = !keep;
        if (keep) { here += 1; }
      });
      /* a test set with no matching row loses its header too */
      block.hidden = here === 0;
      shown += here;
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }
  if (filter && count) {
    filter.addEventListener("input", applyFilter);
    applyFilter();
  }
})();
