
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var F = {};
  data.fields.forEach(function (name, i) { F[name] = i; });
  var rows = data.rows, thumbs = data.thumbs, pageSize = data.page_size;
  var $ = function (id) { return document.getElementById(id); };
  var statusSel = $("f-status"), typeSel = $("f-type"), search = $("f-search");
  var tbody = $("rows"), count = $("count"), pageLabel = $("page"), prev = $("prev"), next = $("next");
  var shown = [], page = 0, haystack = null;

  data.error_types.forEach(function (tc) {
    var option = document.createElement("option");
    option.value = tc[0];
    option.textContent = tc[0] + " (" + tc[1].toLocaleString() + ")";
    typeSel.appendChild(option);
  });

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString(); }
  function ms(v) { return v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(2) + " s"; }
  function usd(v) { return v === null || v === undefined ? "–" : "$" + Number(v).toFixed(5); }

  // The filters, the search and the page live in the URL's hash: a link shares them, Back undoes them.
  function stateHash() {
    var p = new URLSearchParams();
    if (statusSel.value !== "all") p.set("status", statusSel.value);
    if (typeSel.value) p.set("type", typeSel.value);
    if (search.value.trim()) p.set("q", search.value.trim());
    if (page > 0) p.set("page", String(page + 1));
    var text = p.toString();
    return text ? "#" + text : "";
  }
  function writeHash(newEntry) {
    var hash = stateHash();
    if (hash === location.hash) return;
    if (newEntry) location.hash = hash || "#";
    else location.replace(hash || "#");
  }
  function readHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    statusSel.value = ["ok", "error"].indexOf(p.get("status")) >= 0 ? p.get("status") : "all";
    typeSel.value = p.get("type") || "";
    if (typeSel.value !== (p.get("type") || "")) typeSel.value = "";  // a type this output does not have
    search.value = p.get("q") || "";
    applyFilters(Math.max(0, (parseInt(p.get("page"), 10) || 1) - 1));
  }

  function applyFilters(atPage) {
    var status = statusSel.value, type = typeSel.value, q = search.value.trim().toLowerCase();
    if (q && haystack === null) {
      haystack = rows.map(function (r) {
        return [r[F.id], r[F.caption], r[F.error], r[F.image], r[F.task]].join("\n").toLowerCase();
      });
    }
    var ok = 0, error = 0;
    shown = [];
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (status !== "all" && r[F.status] !== status) continue;
      if (type && r[F.error_type] !== type) continue;
      if (q && haystack[i].indexOf(q) < 0) continue;
      shown.push(i);
      if (r[F.status] === "ok") ok++; else if (r[F.status] === "error") error++;
    }
    count.textContent = shown.length.toLocaleString() + " of " + rows.length.toLocaleString() +
      " rows match (" + ok.toLocaleString() + " ok, " + error.toLocaleString() + " error)";
    page = typeof atPage === "number" ? atPage : 0;
    render();
  }

  function thumbCell(r) {
    var td = el("td", "thumb"), t = r[F.thumb];
    if (typeof t === "number") {
      var img = el("img");
      img.alt = "";
      img.src = thumbs[t];
      td.appendChild(img);
    } else if (t === "remote" && /^https?:\/\//i.test(r[F.image] || "")) {
      var a = el("a", "ph remote", "open image ↗");
      a.href = r[F.image];
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      td.appendChild(a);
    } else {
      td.appendChild(el("span", "ph", t));
    }
    return td;
  }

  function rowElement(i, sameImage) {  // sameImage: the row above is another task's answer about this image
    var r = rows[i], tr = el("tr", (r[F.status] === "error" ? "error" : "") + (sameImage ? " same-image" : ""));
    tr.dataset.status = r[F.status] || "";
    tr.dataset.id = r[F.id] || "";
    tr.dataset.task = r[F.task] || "";
    tr.appendChild(sameImage ? el("td", "thumb") : thumbCell(r));
    var id = el("td", "id");
    id.appendChild(el("div", "rid", r[F.id]));
    if (r[F.image] && r[F.image] !== r[F.id]) id.appendChild(el("div", "path", r[F.image]));
    tr.appendChild(id);
    var st = el("td");
    st.appendChild(el("span", "badge " + (r[F.status] === "ok" ? "ok" : "error"), r[F.status]));
    tr.appendChild(st);
    var text = el("td", "text");
    if (r[F.task]) text.appendChild(el("div", "task", r[F.task]));
    if (r[F.status] === "error") {
      text.appendChild(el("div", "etype", r[F.error_type] || "error"));
      text.appendChild(el("div", "emsg", r[F.error]));
    } else {
      text.appendChild(el("div", "caption", r[F.caption]));
    }
    tr.appendChild(text);
    tr.appendChild(labelled("tokens", num(r[F.prompt_tokens]) + " / " + num(r[F.completion_tokens]) + " / " + num(r[F.total_tokens])));
    if (data.has_cost) tr.appendChild(labelled("cost", usd(r[F.cost_usd])));
    tr.appendChild(labelled("latency", ms(r[F.latency_ms])));
    tr.appendChild(labelled("attempts", num(r[F.attempts])));
    return tr;
  }

  function labelled(label, text) {  // the label shows only where rows are cards (a phone-width window)
    var td = el("td", "num", text);
    td.dataset.label = label;
    return td;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * pageSize, end = Math.min(start + pageSize, shown.length);
    var fragment = document.createDocumentFragment();
    for (var k = start; k < end; k++) {
      fragment.appendChild(rowElement(shown[k], k > start && rows[shown[k - 1]][F.id] === rows[shown[k]][F.id]));
    }
    tbody.replaceChildren(fragment);
    pageLabel.textContent = shown.length ? "rows " + (start + 1).toLocaleString() + "–" + end.toLocaleString() +
      " · page " + (page + 1).toLocaleString() + " of " + pages.toLocaleString() : "no rows match";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  statusSel.addEventListener("change", function () { applyFilters(); writeHash(true); });
  typeSel.addEventListener("change", function () {
    if (typeSel.value && statusSel.value === "ok") statusSel.value = "error";
    applyFilters();
    writeHash(true);
  });
  search.addEventListener("input", function () { applyFilters(); writeHash(false); });  // not one Back step per key
  prev.addEventListener("click", function () { page--; render(); writeHash(true); });
  next.addEventListener("click", function () { page++; render(); writeHash(true); });
  window.addEventListener("hashchange", function () { if (location.hash !== stateHash()) readHash(); });
  document.querySelectorAll("[data-error-type]").forEach(function (node) {
    function pick() {
      statusSel.value = "error";
      typeSel.value = node.getAttribute("data-error-type");
      applyFilters();
      writeHash(true);
      $("table").scrollIntoView();
    }
    node.addEventListener("click", pick);
    node.addEventListener("keydown", function (e) { if (e.key === "Enter") pick(); });
  });
  readHash();
})();
