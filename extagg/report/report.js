// extagg sweep report: the results table (sort, filter) and the SVG charts (hover, legend toggling).
// Plain JavaScript, no library, no network: the data is the JSON block #report-data.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var ROWS = D.rows;
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22"];
  var NS = "http://www.w3.org/2000/svg";
  var hidden = {};
  var tip = document.getElementById("tip");

  function fmt(v) { return v === null || v === undefined ? "NaN" : (Math.abs(v) >= 1000 ? v.toExponential(2) : v.toFixed(3)); }
  function colour(m) { return PALETTE[D.methods.indexOf(m) % PALETTE.length]; }
  function el(tag, attrs, text) {
    var x = document.createElement(tag);
    for (var k in attrs || {}) x.setAttribute(k, attrs[k]);
    if (text !== undefined) x.textContent = text;
    return x;
  }
  function sv(tag, attrs, text) {
    var x = document.createElementNS(NS, tag);
    for (var k in attrs || {}) x.setAttribute(k, attrs[k]);
    if (text !== undefined) x.textContent = text;
    return x;
  }
  function direction(d) { var p = D.directions[d] || ["", d]; return p[0] + " " + p[1]; }
  function floorsText(r) {
    var out = [];
    for (var k in r.floors) out.push(k.replace(/^floor:/, "") + " " + fmt(r.floors[k].value));
    return out.join("; ");
  }
  function showTip(ev, text) {
    tip.textContent = text; tip.style.display = "block";
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  // ------------------------------------------------------------------ the table
  var COLS = [
    ["method", "method", function (r) { return r.method; }],
    ["layer", "layer", function (r) { return r.layer; }],
    ["metric", "metric", function (r) { return r.metric; }],
    ["measure", "measure", function (r) { return r.measure; }],
    ["subset", "subset", function (r) { return r.subset; }],
    ["direction", "direction", function (r) { return direction(r.direction); }],
    ["value", "value", function (r) { return r.value; }, true],
    ["ci", "95% CI", function (r) { return r.lo; }, true],
    ["n", "n", function (r) { return r.n; }, true],
    ["nan", "nan", function (r) { return r.nan; }, true],
    ["std", "std", function (r) { return r.std; }, true],
    ["floors", "floors", function (r) { return floorsText(r); }]
  ];
  var sortKey = null, sortDir = 1, order = ROWS.map(function (_, i) { return i; });
  var table = document.getElementById("results-table");
  var thead = table.querySelector("thead"), tbody = table.querySelector("tbody");
  var filters = {method: "", layer: "", metric: ""};

  var headRow = el("tr");
  COLS.forEach(function (c) {
    var th = el("th", {"data-key": c[0]}, c[1]);
    th.addEventListener("click", function () { sortBy(c[0]); });
    headRow.appendChild(th);
  });
  thead.appendChild(headRow);

  ROWS.forEach(function (r, i) {
    var tr = el("tr", {"data-index": String(i), "data-method": r.method, "data-layer": r.layer,
                       "data-metric": r.metric});
    COLS.forEach(function (c) {
      var td;
      if (c[0] === "ci") td = el("td", {"class": "num"}, r.lo === null ? "\u2014" : "[" + fmt(r.lo) + ", " + fmt(r.hi) + "]");
      else if (c[0] === "floors") td = el("td", {"class": "floor"}, floorsText(r));
      else if (c[3]) td = el("td", {"class": "num", "data-key": c[0]}, c[0] === "n" || c[0] === "nan" ? String(r[c[0]]) : fmt(r[c[0]]));
      else td = el("td", {"data-key": c[0]}, c[2](r));
      tr.appendChild(td);
    });
    r._tr = tr;
  });

  function sortBy(key) {
    if (sortKey === key) sortDir = -sortDir; else { sortKey = key; sortDir = 1; }
    var col = COLS.filter(function (c) { return c[0] === key; })[0];
    order.sort(function (a, b) {
      var x = col[2](ROWS[a]), y = col[2](ROWS[b]);
      var xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) return xn === yn ? a - b : (xn ? 1 : -1);  // NaN last, whatever the direction
      if (x < y) return -sortDir;
      if (x > y) return sortDir;
      return a - b;
    });
    Array.prototype.forEach.call(thead.querySelectorAll("th"), function (th) {
      th.className = th.getAttribute("data-key") === key ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
    renderTable();
  }

  function renderTable() {
    var shown = 0;
    order.forEach(function (i) {
      var r = ROWS[i];
      var ok = (!filters.method || r.method === filters.method) && (!filters.layer || r.layer === filters.layer) &&
               (!filters.metric || r.metric === filters.metric);
      r._tr.style.display = ok ? "" : "none";
      if (ok) shown++;
      tbody.appendChild(r._tr);
    });
    document.getElementById("count").textContent = shown + " of " + ROWS.length + " rows shown";
  }

  var fbox = document.getElementById("filters");
  [["method", D.methods], ["layer", D.layers], ["metric", uniq(ROWS.map(function (r) { return r.metric; }))]]
    .forEach(function (f) {
      var label = el("label", {}, f[0] + " ");
      var sel = el("select", {id: "filter-" + f[0]});
      sel.appendChild(el("option", {value: ""}, "all"));
      f[1].forEach(function (v) {
        if (ROWS.some(function (r) { return r[f[0]] === v; })) sel.appendChild(el("option", {value: v}, v));
      });
      sel.addEventListener("change", function () { filters[f[0]] = sel.value; renderTable(); });
      label.appendChild(sel); fbox.appendChild(label);
    });
  function uniq(a) { return a.filter(function (v, i) { return a.indexOf(v) === i; }); }
  renderTable();

  // ------------------------------------------------------------------ the charts
  var choices = [];
  ROWS.forEach(function (r) {
    if (r.subset !== D.headline[r.metric]) return;
    var id = r.metric + "\u0000" + r.measure;
    if (choices.indexOf(id) < 0) choices.push(id);
  });
  var msel = document.getElementById("chart-measure");
  choices.forEach(function (id) {
    var p = id.split("\u0000");
    msel.appendChild(el("option", {value: id}, p[0] + " \u00b7 " + p[1] + " [" + D.headline[p[0]] + "]"));
  });
  msel.addEventListener("change", drawCharts);

  function legend() {
    var box = document.getElementById("legend");
    box.textContent = "";
    D.methods.forEach(function (m) {
      var s = el("span", {"data-method": m, "class": hidden[m] ? "off" : ""});
      var sw = el("i"); sw.style.background = colour(m);
      s.appendChild(sw); s.appendChild(document.createTextNode(m));
      s.addEventListener("click", function () { hidden[m] = !hidden[m]; legend(); drawCharts(); });
      box.appendChild(s);
    });
  }

  function selected() {
    if (!msel.value) return [];
    var p = msel.value.split("\u0000");
    return ROWS.filter(function (r) { return r.metric === p[0] && r.measure === p[1] && r.subset === D.headline[p[0]]; });
  }

  function extent(rows) {
    var vals = [];
    rows.forEach(function (r) {
      [r.value, r.lo, r.hi].forEach(function (v) { if (v !== null) vals.push(v); });
      for (var k in r.floors) if (r.floors[k].value !== null) vals.push(r.floors[k].value);
    });
    if (!vals.length) return [0, 1];
    var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    if (hi === lo) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  function yAxis(svg, y, ext, left, right) {
    for (var i = 0; i <= 4; i++) {
      var v = ext[0] + (ext[1] - ext[0]) * i / 4, py = y(v);
      svg.appendChild(sv("line", {x1: left, x2: right, y1: py, y2: py, stroke: "#eee"}));
      svg.appendChild(sv("text", {x: left - 4, y: py + 4, "text-anchor": "end"}, v.toFixed(2)));
    }
  }

  function point(svg, cx, cy, c, text, method, layer) {
    var dot = sv("circle", {cx: cx, cy: cy, r: 4, fill: c, "class": "pt", "data-method": method, "data-layer": layer});
    dot.addEventListener("mousemove", function (ev) { showTip(ev, text); });
    dot.addEventListener("mouseleave", hideTip);
    svg.appendChild(dot);
  }

  function cellText(r) {
    var t = r.method + " at " + r.layer + "\n" + r.metric + " " + r.measure + " [" + r.subset + "]: " + fmt(r.value) +
            "\n95% CI " + (r.lo === null ? "\u2014" : "[" + fmt(r.lo) + ", " + fmt(r.hi) + "]") + "; n " + r.n +
            ", nan " + r.nan;
    var f = floorsText(r);
    return f ? t + "\nfloors: " + f : t;
  }

  function drawLayers(rows) {
    var box = document.getElementById("chart-layers"); box.textContent = "";
    var layers = D.layers.filter(function (l) { return rows.some(function (r) { return r.layer === l; }); });
    var single = layers.filter(function (l) { return l.indexOf("combine:") !== 0; });
    var combos = layers.filter(function (l) { return l.indexOf("combine:") === 0; });
    var xs = single.concat(combos);
    var W = Math.max(420, 60 * xs.length + 120), H = 340, L = 56, R = W - 16, T = 14, B = H - 90;
    var svg = sv("svg", {width: W, height: H, id: "svg-layers", role: "img"});
    var ext = extent(rows);
    var y = function (v) { return B - (v - ext[0]) / (ext[1] - ext[0]) * (B - T); };
    var step = (R - L) / Math.max(1, xs.length);
    var x = function (l) { return L + step * (xs.indexOf(l) + 0.5); };
    yAxis(svg, y, ext, L, R);
    xs.forEach(function (l) {
      var t = sv("text", {x: x(l), y: B + 12, "text-anchor": "end", transform: "rotate(-35 " + x(l) + " " + (B + 12) + ")"},
                 l.length > 18 ? "\u2026" + l.slice(-17) : l);
      svg.appendChild(t);
    });
    if (combos.length && single.length) {
      var dx = L + step * single.length;
      svg.appendChild(sv("line", {x1: dx, x2: dx, y1: T, y2: B, stroke: "#888", "stroke-dasharray": "4 3"}));
      svg.appendChild(sv("text", {x: dx + 4, y: T + 10}, "combinations"));
    }
    D.methods.forEach(function (m) {
      if (hidden[m]) return;
      var mine = rows.filter(function (r) { return r.method === m; });
      var c = colour(m);
      var line = function (get, dash, width) {
        var pts = single.map(function (l) {
          var r = mine.filter(function (q) { return q.layer === l; })[0];
          var v = r ? get(r) : null;
          return v === null || v === undefined ? null : x(l) + "," + y(v);
        }).filter(function (p) { return p !== null; });
        if (pts.length > 1) svg.appendChild(sv("polyline", {points: pts.join(" "), fill: "none", stroke: c,
          "stroke-width": width, "stroke-dasharray": dash, "data-method": m}));
      };
      line(function (r) { return r.value; }, "", 2);
      var floorNames = uniq([].concat.apply([], mine.map(function (r) { return Object.keys(r.floors); })));
      floorNames.forEach(function (f, k) {
        line(function (r) { return r.floors[f] ? r.floors[f].value : null; }, k ? "2 3" : "6 4", 1.2);
      });
      mine.forEach(function (r) {
        if (r.value === null || xs.indexOf(r.layer) < 0) return;
        if (r.lo !== null) svg.appendChild(sv("line", {x1: x(r.layer), x2: x(r.layer), y1: y(r.lo), y2: y(r.hi),
                                                   stroke: c, "stroke-width": 1.2, opacity: 0.6}));
        point(svg, x(r.layer), y(r.value), c, cellText(r), m, r.layer);
      });
    });
    box.appendChild(svg);
  }

  function best(mine, dir) {
    var ok = mine.filter(function (r) { return r.value !== null; });
    if (!ok.length) return null;
    var score = function (r) { return dir === "higher" ? -r.value : dir === "zero" ? Math.abs(r.value) : r.value; };
    return ok.reduce(function (a, b) { return score(b) < score(a) ? b : a; });
  }

  function drawRanking(rows) {
    var box = document.getElementById("chart-ranking"); box.textContent = "";
    var dir = rows.length ? rows[0].direction : "higher";
    var ranked = D.methods.filter(function (m) { return !hidden[m]; }).map(function (m) {
      return best(rows.filter(function (r) { return r.method === m; }), dir);
    }).filter(function (r) { return r !== null; });
    var key = function (r) { return dir === "higher" ? -r.value : dir === "zero" ? Math.abs(r.value) : r.value; };
    ranked.sort(function (a, b) { return key(a) - key(b); });
    var W = 460, rowH = 26, T = 24, H = T + rowH * Math.max(1, ranked.length) + 30, L = 190, R = W - 16;
    var svg = sv("svg", {width: W, height: H, id: "svg-ranking", role: "img"});
    var ext = extent(ranked);
    var x = function (v) { return L + (v - ext[0]) / (ext[1] - ext[0]) * (R - L); };
    svg.appendChild(sv("text", {x: L, y: 14}, "best layer per method, " + direction(dir)));
    for (var i = 0; i <= 4; i++) {
      var v = ext[0] + (ext[1] - ext[0]) * i / 4;
      svg.appendChild(sv("line", {x1: x(v), x2: x(v), y1: T, y2: H - 24, stroke: "#eee"}));
      svg.appendChild(sv("text", {x: x(v), y: H - 10, "text-anchor": "middle"}, v.toFixed(2)));
    }
    ranked.forEach(function (r, k) {
      var cy = T + rowH * (k + 0.5), c = colour(r.method);
      svg.appendChild(sv("text", {x: L - 8, y: cy + 4, "text-anchor": "end"},
                         (k + 1) + ". " + r.method + " @" + (r.layer.length > 14 ? "\u2026" + r.layer.slice(-13) : r.layer)));
      if (r.lo !== null) svg.appendChild(sv("line", {x1: x(r.lo), x2: x(r.hi), y1: cy, y2: cy, stroke: c, "stroke-width": 2}));
      for (var f in r.floors) {
        if (r.floors[f].value === null) continue;
        var fx = x(r.floors[f].value);
        svg.appendChild(sv("line", {x1: fx, x2: fx, y1: cy - 7, y2: cy + 7, stroke: "#666", "stroke-dasharray": "2 2"}));
      }
      point(svg, x(r.value), cy, c, cellText(r), r.method, r.layer);
    });
    box.appendChild(svg);
  }

  function drawCharts() { var rows = selected(); drawLayers(rows); drawRanking(rows); }
  legend();
  drawCharts();
})();
