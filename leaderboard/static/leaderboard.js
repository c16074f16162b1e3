// Sortable tables and the target-kind filter. No data is fetched: everything is in the page.
(function () {
  "use strict";

  function cellKey(row, col, type) {
    var cell = row.cells[col];
    if (!cell) return null;
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (type === "num") {
      if (raw === "") return null;
      var n = parseFloat(raw);
      return isNaN(n) ? null : n;
    }
    return raw.toLowerCase();
  }

  // The column index of a header cell in the body rows, accounting for colspan / rowspan in the
  // header rows above and before it.
  function columnIndex(th) {
    var table = th.closest("table");
    var grid = [];
    var rows = table.tHead.rows;
    for (var r = 0; r < rows.length; r++) {
      grid[r] = grid[r] || [];
      var c = 0;
      for (var i = 0; i < rows[r].cells.length; i++) {
        var cell = rows[r].cells[i];
        while (grid[r][c]) c++;
        for (var dr = 0; dr < (cell.rowSpan || 1); dr++) {
          grid[r + dr] = grid[r + dr] || [];
          for (var dc = 0; dc < (cell.colSpan || 1); dc++) grid[r + dr][c + dc] = true;
        }
        if (cell === th) return c;
        c += cell.colSpan || 1;
      }
    }
    return -1;
  }

  function sortBy(th) {
    var table = th.closest("table");
    var tbody = table.querySelector("tbody.rows");
    if (!tbody) return;
    var col = columnIndex(th);
    var type = th.getAttribute("data-type") || "text";
    var current = th.getAttribute("aria-sort");
    var dir;
    if (current === "ascending") dir = "descending";
    else if (current === "descending") dir = "ascending";
    else dir = th.getAttribute("data-first") || "ascending";
    var rows = Array.prototype.slice.call(tbody.rows);
    var indexed = rows.map(function (row, i) { return { row: row, key: cellKey(row, col, type), i: i }; });
    indexed.sort(function (a, b) {
      if (a.key === null && b.key === null) return a.i - b.i;
      if (a.key === null) return 1; // missing values last, whatever the direction
      if (b.key === null) return -1;
      var d = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      if (dir === "descending") d = -d;
      return d || a.i - b.i;
    });
    indexed.forEach(function (x) { tbody.appendChild(x.row); });
    table.querySelectorAll("th[aria-sort]").forEach(function (h) {
      h.setAttribute("aria-sort", "none");
      var a = h.querySelector(".arrow");
      if (a) a.textContent = "";
    });
    th.setAttribute("aria-sort", dir);
    var arrow = th.querySelector(".arrow");
    if (arrow) arrow.textContent = dir === "ascending" ? " ▲" : " ▼";
  }

  function setKind(kind) {
    var shown = 0, total = 0;
    document.querySelectorAll("tr[data-kind]").forEach(function (tr) {
      var kinds = (tr.getAttribute("data-kind") || "").split(" ");
      var ok = kind === "all" || kinds.indexOf(kind) >= 0;
      tr.hidden = !ok;
      if (tr.closest("tbody.rows") && tr.closest("section.suite")) { total++; if (ok) shown++; }
    });
    document.querySelectorAll("svg.tradeoff [data-kind], svg.asr-curve [data-kind]").forEach(function (el) {
      var kinds = (el.getAttribute("data-kind") || "").split(" ");
      el.classList.toggle("dimmed", !(kind === "all" || kinds.indexOf(kind) >= 0));
    });
    document.querySelectorAll("button.kind-filter").forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-kind") === kind ? "true" : "false");
    });
    var status = document.querySelector(".filter-status");
    if (status) status.textContent = kind === "all" ? "" : "showing " + shown + " of " + total + " rows (" + kind + " targets)";
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable th[aria-sort] button").forEach(function (b) {
      b.addEventListener("click", function () { sortBy(b.closest("th")); });
    });
    document.querySelectorAll("button.kind-filter").forEach(function (b) {
      b.addEventListener("click", function () { setKind(b.getAttribute("data-kind")); });
    });
  });
})();
