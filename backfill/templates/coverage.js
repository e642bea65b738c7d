/* The coverage page's script (part of backfill, MIT licence): it draws the data it is given
   (rows of cells, laid out by backfill) and shows a window's details on hover or click. It
   loads nothing, except -- on the live page of a running backfill -- the same data again
   from the page's own address, every few seconds. */
"use strict";
(function () {
  var doc = document;
  var data = JSON.parse(doc.getElementById("coverage-data").textContent);
  var pinned = null; // {flow: flow id, start: window start, cell: whether a whole cell}
  var lastGood = Date.now();
  var number = new Intl.NumberFormat("en");
  var zoneFormats = {};

  function el(tag, cls, text) {
    var node = doc.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function n(x) { return number.format(x); }
  function utc(s) { return new Date(s * 1000).toISOString().replace(".000Z", "Z"); }
  function local(s, zone) {
    if (!zone || zone === "UTC") return null;
    try {
      var f = zoneFormats[zone] || (zoneFormats[zone] = new Intl.DateTimeFormat("sv-SE", {
        timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
        minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "shortOffset"}));
      return f.format(new Date(s * 1000));
    } catch (e) { return null; }
  }
  function duration(seconds) { // 86400 -> "1d", 82800 -> "23h", 2674800 -> "30d 23h"
    var parts = [], units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    units.forEach(function (unit) {
      var k = Math.floor(seconds / unit[1]);
      if (k) { parts.push(k + unit[0]); seconds -= k * unit[1]; }
    });
    return parts.join(" ") || "0s";
  }
  function swatch(code) {
    var state = data.states[code];
    return el("i", "sw s" + code + (state.pattern ? " p-" + state.pattern : ""));
  }
  function stateStyles() {
    var css = "";
    data.states.forEach(function (state, i) { css += ".s" + i + "{background-color:" + state.colour + "}\n"; });
    var style = doc.getElementById("state-styles");
    if (!style) { style = el("style"); style.id = "state-styles"; doc.head.appendChild(style); }
    style.textContent = css;
  }
  function shown(counts) { // the states worth a legend entry: the core ones, and any present
    var codes = [];
    data.states.forEach(function (state, i) { if (state.core || counts[state.key]) codes.push(i); });
    return codes;
  }
  function chips(counts, records, cls) {
    var box = el("div", cls);
    shown(counts).forEach(function (code) {
      var state = data.states[code];
      var chip = el("span");
      chip.dataset.state = state.key;
      chip.appendChild(swatch(code));
      chip.appendChild(doc.createTextNode(state.label + " "));
      chip.appendChild(el("b", "count", n(counts[state.key] || 0)));
      box.appendChild(chip);
    });
    var rec = el("span", "records");
    rec.appendChild(doc.createTextNode("records ingested "));
    rec.appendChild(el("b", null, recordsText(records)));
    box.appendChild(rec);
    return box;
  }
  function recordsText(records) {
    if (records.known === 0) return "unknown";
    var text = n(records.sum);
    if (records.unknown) text += " (unknown for " + n(records.unknown) + " finished windows)";
    return text;
  }

  function header() {
    var status = doc.getElementById("status");
    status.replaceChildren();
    if (data.live) {
      var stale = Date.now() - lastGood > 3 * data.refresh * 1000 + 2000;
      status.appendChild(el("span", stale ? "stale" : "live",
        stale ? "no answer from the backfill: it has finished or stopped" : "live"));
      status.appendChild(doc.createTextNode(" \u00b7 refreshes every " + data.refresh + " s \u00b7 "));
    }
    status.appendChild(doc.createTextNode(n(data.windows) + " windows in " + data.flows.length +
      (data.flows.length === 1 ? " flow" : " flows") + " \u00b7 read " + data.generated));
  }

  function summary() {
    var box = el("section", "overview");
    box.appendChild(chips(data.totals, data.records, "legend"));
    var table = el("table", "files");
    var head = el("tr");
    ["checkpoint", "shard", "windows", "last written (UTC)", "held by"].forEach(function (t) { head.appendChild(el("th", null, t)); });
    table.appendChild(head);
    data.checkpoints.forEach(function (ck) {
      var row = el("tr");
      row.appendChild(el("td", "path", ck.path));
      row.appendChild(el("td", null, ck.shard || "whole plan"));
      row.appendChild(el("td", null, n(ck.windows)));
      row.appendChild(el("td", null, ck.written || "unknown"));
      row.appendChild(el("td", "holder", ck.held_by === null ? "no process" :
        (data.live ? "this backfill, process " : "process ") + ck.held_by));
      table.appendChild(row);
    });
    box.appendChild(table);
    return box;
  }

  function mixOf(flow, first, count) {
    var counts = {};
    for (var i = first; i < first + count; i++) counts[flow.st[i]] = (counts[flow.st[i]] || 0) + 1;
    return counts;
  }
  function paintMix(node, counts, count) {
    var stops = [], at = 0, mix = [], alert = false, only = null, kinds = 0;
    data.states.forEach(function (state, code) {
      var k = counts[code];
      if (!k) return;
      kinds += 1; only = code;
      mix.push(state.key + ":" + k);
      if (state.alert) alert = true;
      var to = at + 100 * k / count;
      stops.push(state.colour + " " + at.toFixed(2) + "% " + to.toFixed(2) + "%");
      at = to;
    });
    node.dataset.mix = mix.join(" ");
    if (kinds === 1) {
      var state = data.states[only];
      node.className = "c mix s" + only + (state.pattern ? " p-" + state.pattern : "");
    } else {
      node.className = "c mix" + (alert ? " m-alert" : "");
      node.style.background = "linear-gradient(to top, " + stops.join(", ") + ")";
    }
  }

  function cellSize(cols) {
    var size = cols <= 12 ? 26 : cols <= 24 ? 20 : cols <= 31 ? 17 : cols <= 60 ? 12 : 900 / cols;
    // Never wider than the page: a row is its label and its cells, each cell 1 px apart.
    var label = window.matchMedia("(max-width: 900px)").matches ? 100 : 112;
    var room = doc.getElementById("app").clientWidth - label;
    if (room > 0) size = Math.min(size, room / cols - 1);
    return Math.max(6, Math.floor(size));
  }

  function axis(flow, size) {
    var line = el("div", "axis");
    line.appendChild(el("span", "lab", "."));
    var cells = el("div", "cells");
    cells.style.setProperty("--cols", flow.layout.cols);
    cells.style.setProperty("--cell", size + "px");
    flow.axis.forEach(function (tick) {
      var label = el("span", null, tick[1]);
      label.style.gridColumn = String(tick[0] + 1);
      cells.appendChild(label);
    });
    line.appendChild(cells);
    return line;
  }

  function flowSection(flow, f) {
    var section = el("section", "flow");
    section.dataset.flow = String(f);
    section.dataset.id = flow.id;
    section.appendChild(el("h2", null, flow.id));
    section.appendChild(el("p", "meta", flow.range + " \u00b7 " + n(flow.windows) + " windows" +
      (flow.zone !== "UTC" ? " \u00b7 zone " + flow.zone : " \u00b7 UTC") + " \u00b7 " + flow.describe));
    section.appendChild(chips(flow.counts, flow.records, "chips"));
    var size = cellSize(flow.layout.cols);
    var grid = el("div", "grid");
    grid.appendChild(axis(flow, size));
    flow.rows.forEach(function (row, r) {
      var line = el("div", "row");
      line.appendChild(el("span", "lab", row[0]));
      var cells = el("div", "cells");
      cells.style.setProperty("--cols", flow.layout.cols);
      cells.style.setProperty("--cell", size + "px");
      row[1].forEach(function (cell, c) {
        var node = el("i");
        node.style.gridColumn = String(cell[0] + 1);
        node.dataset.at = r + ":" + c;
        node.dataset.n = String(cell[2]);
        node.dataset.start = String(flow.s[cell[1]]);
        if (cell[2] === 1) {
          var code = flow.st[cell[1]], state = data.states[code];
          node.className = "c s" + code + (state.pattern ? " p-" + state.pattern : "");
          node.dataset.state = state.key;
        } else {
          paintMix(node, mixOf(flow, cell[1], cell[2]), cell[2]);
        }
        cells.appendChild(node);
      });
      line.appendChild(cells);
      grid.appendChild(line);
    });
    section.appendChild(grid);
    return section;
  }

  function render() {
    stateStyles();
    header();
    var frag = doc.createDocumentFragment();
    frag.appendChild(summary());
    data.flows.forEach(function (flow, f) { frag.appendChild(flowSection(flow, f)); });
    doc.getElementById("app").replaceChildren(frag);
    if (pinned) restore();
    doc.documentElement.dataset.rendered = String(Math.round(performance.now()));
    doc.documentElement.dataset.renders = String(Number(doc.documentElement.dataset.renders || 0) + 1);
  }

  // ---------------------------------------------------------------- details

  function row(list, term, value, cls) {
    list.appendChild(el("dt", null, term));
    var dd = el("dd", cls);
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    list.appendChild(dd);
  }
  function showWindow(f, w) {
    var flow = data.flows[f], state = data.states[flow.st[w]];
    var start = flow.s[w], end = start + flow.d[w];
    var panel = doc.getElementById("detail");
    panel.replaceChildren();
    panel.dataset.kind = "window";
    panel.dataset.state = state.key;
    var title = el("h3");
    title.appendChild(swatch(flow.st[w]));
    title.appendChild(doc.createTextNode(state.label));
    panel.appendChild(title);
    var list = el("dl");
    row(list, "flow", flow.id);
    row(list, "UTC", utc(start) + " \u2013 " + utc(end), "utc");
    var from = local(start, flow.zone), to = local(end, flow.zone);
    if (from) row(list, flow.zone, from + " \u2013 " + to, "zone");
    row(list, "length", duration(end - start));
    row(list, "state", state.label, "state");
    row(list, "attempts", String(flow.a[w]), "attempts");
    var runs = flow.r[w];
    if (runs) {
      var box = el("div", "runs");
      runs.forEach(function (id, i) {
        box.appendChild(el("div", null, id + (runs.length > 1 && i === runs.length - 1 ? " (latest)" : "")));
      });
      row(list, runs.length > 1 ? "runs" : "run", box);
    } else {
      row(list, "run", "none yet", "runs");
    }
    var count = flow.n[w];
    row(list, "records ingested", count === null ? "unknown" : n(count), "records");
    if (flow.x[w]) row(list, "last error", el("pre", null, flow.x[w]), "error");
    panel.appendChild(list);
  }
  function showCell(f, r, c) {
    var flow = data.flows[f], cell = flow.rows[r][1][c];
    if (cell[2] === 1) return showWindow(f, cell[1]);
    var first = cell[1], last = first + cell[2] - 1;
    var panel = doc.getElementById("detail");
    panel.replaceChildren();
    panel.dataset.kind = "cell";
    delete panel.dataset.state;
    panel.appendChild(el("h3", null, n(cell[2]) + " windows"));
    var list = el("dl");
    row(list, "flow", flow.id);
    row(list, "UTC", utc(flow.s[first]) + " \u2013 " + utc(flow.s[last] + flow.d[last]));
    var counts = mixOf(flow, first, cell[2]);
    data.states.forEach(function (state, code) {
      if (counts[code]) row(list, state.label, n(counts[code]));
    });
    panel.appendChild(list);
    var items = el("ul");
    for (var w = first; w <= last && w < first + 400; w++) {
      var item = el("li");
      item.dataset.window = String(w);
      item.appendChild(swatch(flow.st[w]));
      item.appendChild(doc.createTextNode(utc(flow.s[w]).slice(5, 16).replace("T", " ")));
      items.appendChild(item);
    }
    items.addEventListener("click", function (event) {
      var item = event.target.closest("li");
      if (!item) return;
      pin({flow: flow.id, start: flow.s[Number(item.dataset.window)], cell: false});
    });
    panel.appendChild(items);
  }

  function tooltip(at) { // the browser's own tooltip: the cell's time and state(s)
    var flow = data.flows[at[0]], cell = flow.rows[at[1]][1][at[2]];
    var first = cell[1], last = first + cell[2] - 1;
    var text = utc(flow.s[first]).slice(0, 16).replace("T", " ");
    if (cell[2] === 1) return text + " UTC \u00b7 " + data.states[flow.st[first]].label;
    var counts = mixOf(flow, first, cell[2]), parts = [];
    data.states.forEach(function (state, code) { if (counts[code]) parts.push(n(counts[code]) + " " + state.label); });
    return text + " \u2013 " + utc(flow.s[last] + flow.d[last]).slice(0, 16).replace("T", " ") + " UTC \u00b7 " + parts.join(", ");
  }
  function locate(target) { // a cell element -> [flow index, row, cell]
    var section = target.closest("section.flow");
    if (!section || !target.dataset.at) return null;
    var at = target.dataset.at.split(":");
    return [Number(section.dataset.flow), Number(at[0]), Number(at[1])];
  }
  function findWindow(flowId, start) {
    for (var f = 0; f < data.flows.length; f++) {
      var flow = data.flows[f];
      if (flow.id !== flowId) continue;
      var lo = 0, hi = flow.s.length - 1;
      while (lo <= hi) {
        var mid = (lo + hi) >> 1;
        if (flow.s[mid] === start) return [f, mid];
        if (flow.s[mid] < start) lo = mid + 1; else hi = mid - 1;
      }
    }
    return null;
  }
  function cellOf(f, w) {
    var rows = data.flows[f].rows;
    for (var r = 0; r < rows.length; r++) {
      var cells = rows[r][1];
      var lastCell = cells[cells.length - 1];
      if (!lastCell || lastCell[1] + lastCell[2] <= w) continue;
      for (var c = 0; c < cells.length; c++) {
        if (w >= cells[c][1] && w < cells[c][1] + cells[c][2]) return [r, c];
      }
    }
    return null;
  }
  function select(f, r, c) {
    var old = doc.querySelector(".c.sel");
    if (old) old.classList.remove("sel");
    var section = doc.querySelector('section.flow[data-flow="' + f + '"]');
    var node = section && section.querySelector('[data-at="' + r + ":" + c + '"]');
    if (node) node.classList.add("sel");
  }
  function restore() {
    var found = findWindow(pinned.flow, pinned.start);
    if (!found) { pinned = null; return; }
    var at = cellOf(found[0], found[1]);
    if (!at) return;
    select(found[0], at[0], at[1]);
    if (pinned.cell) showCell(found[0], at[0], at[1]); else showWindow(found[0], found[1]);
  }
  function pin(target) {
    pinned = target;
    restore();
    try { history.replaceState(null, "", "#w=" + encodeURIComponent(target.flow) + ":" + target.start + (target.cell ? ":cell" : "")); } catch (e) { /* file: pages may refuse */ }
  }

  var app = doc.getElementById("app");
  app.addEventListener("mouseover", function (event) {
    var at = locate(event.target);
    if (!at) return;
    if (!event.target.title) event.target.title = tooltip(at);
    if (!pinned) showCell(at[0], at[1], at[2]);
  });
  app.addEventListener("click", function (event) {
    var at = locate(event.target);
    if (!at) return;
    var flow = data.flows[at[0]], cell = flow.rows[at[1]][1][at[2]];
    pin({flow: flow.id, start: flow.s[cell[1]], cell: cell[2] > 1});
  });
  doc.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { pinned = null; select(-1, -1, -1); }
  });

  function fromHash() {
    var match = /^#w=([^:]+):(\d+)(:cell)?$/.exec(location.hash);
    if (match) pinned = {flow: decodeURIComponent(match[1]), start: Number(match[2]), cell: !!match[3]};
  }

  function poll() {
    fetch("coverage.json", {cache: "no-store"}).then(function (response) {
      if (!response.ok) throw new Error(String(response.status));
      return response.json();
    }).then(function (fresh) {
      data = fresh;
      lastGood = Date.now();
      render();
    }).catch(function () {
      header();
    }).then(function () {
      setTimeout(poll, data.refresh * 1000);
    });
  }

  // A window made narrower or wider draws its cells again to fit (once the resizing rests).
  var drawnAt = app.clientWidth, resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      if (Math.abs(app.clientWidth - drawnAt) < 8) return;
      drawnAt = app.clientWidth;
      render();
    }, 150);
  });

  fromHash();
  render();
  if (data.live) setTimeout(poll, data.refresh * 1000);
})();
