// The search page: plain DOM, no build step. Everything that comes from the index is
// inserted with textContent (never innerHTML), so a document's markup shows as text.
"use strict";

const $ = (id) => document.getElementById(id);
const STOP_WORDS = new Set(["a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for",
  "from", "how", "in", "is", "it", "of", "on", "or", "the", "to", "what", "when", "why", "with"]);

// With --api-key the page itself loads only for a browser (or a proxy in front of the
// server) that sends "Authorization: Bearer <key>" on every request; these fetches carry
// it the same way, so the page sets no header of its own.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { "Content-Type": "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    throw new Error("This server needs its API key on every request (Authorization: Bearer <key>).");
  }
  if (!response.ok) {
    throw new Error((body.error && body.error.message) || response.statusText);
  }
  return body;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// The snippet as text nodes, with the query's words wrapped in <mark>: whole words, or
// the start of a longer word ("plant" in "plants"), never the inside of one ("pre" in
// "expression").
function highlighted(text, query) {
  const words = query.toLowerCase().split(/[^\p{L}\p{N}]+/u)
    .filter((w) => w.length > 1 && !STOP_WORDS.has(w))
    .sort((a, b) => b.length - a.length);  // the longest alternative first
  const fragment = document.createDocumentFragment();
  if (!words.length) {
    fragment.append(document.createTextNode(text));
    return fragment;
  }
  const alternatives = words.map(escapeRegExp).join("|");
  const pattern = new RegExp("(?<![\\p{L}\\p{N}])(?:" + alternatives + ")", "giu");
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    fragment.append(document.createTextNode(text.slice(last, match.index)));
    fragment.append(el("mark", "", match[0]));
    last = match.index + match[0].length;
  }
  fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

function showHits(hits, query) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of hits) {
    const item = el("li", "hit");
    const head = el("div", "head");
    head.append(el("span", "rank", hit.rank + "."), el("span", "title", hit.title || hit.doc_id),
      el("span", "score", hit.score.toFixed(4)));
    let where = hit.doc_id === hit.source ? hit.source : hit.source + " · " + hit.doc_id;
    const snippet = el("p", "snippet");
    snippet.append(highlighted(hit.snippet, query));
    if (hit.passage) {  // an index of passages: the snippet is the document's best passage
      const p = hit.passage;
      where += " · passage " + (p.position + 1) + ", characters " + p.char_start.toLocaleString()
        + "–" + p.char_end.toLocaleString();
      snippet.classList.add("passage");
    }
    item.append(head, el("div", "source", where), snippet);
    list.append(item);
  }
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const instruct = $("instruct").value.trim();
  const k = Math.max(1, parseInt($("k").value, 10) || 10);
  const mode = $("mode").value;
  const where = $("where").value.trim();
  const status = $("status");
  status.className = "muted";
  status.textContent = "searching…";
  const started = performance.now();
  try {
    const body = await api("/search", {
      method: "POST",
      body: JSON.stringify({ query, k, ...(instruct ? { instruct } : {}), ...(mode ? { mode } : {}),
        ...(where ? { where } : {}) }),
    });
    const hits = body.results[0];
    const ms = Math.round(performance.now() - started);
    status.textContent = hits.length + " hits in " + ms + " ms · " +
      (body.fusion ? body.mode + ", " + body.fusion : body.mode) +
      (body.mode === "lexical" ? "" :
        body.instruction ? " · instruction: " + body.instruction : " · no instruction");
    showHits(hits, query);
    // The URL is a deep link to this search: query, instruction, k, mode and filter.
    const link = new URLSearchParams({ q: query });
    if (instruct) link.set("instruct", instruct);
    link.set("k", String(k));
    if (mode) link.set("mode", mode);
    if (where) link.set("where", where);
    history.replaceState(null, "", "?" + link);
  } catch (error) {
    $("results").replaceChildren();  // no hits of an earlier search under this error
    status.className = "error";
    status.textContent = error.message;
  }
}

async function loadPresets() {
  const body = await api("/instructions");
  for (const preset of body.presets) {
    const option = el("option", "", preset.name);
    option.value = preset.instruction;
    $("preset").append(option);
    const listed = el("option");
    listed.value = preset.instruction;
    $("presets").append(listed);
  }
}

async function loadInfo() {
  const info = await api("/info");
  $("index-info").textContent = info.documents + " documents · " + info.model +
    " · generation " + info.generation;
  if (info.default_instruction) $("instruct").placeholder = info.default_instruction;
}

$("search-form").addEventListener("submit", search);
$("preset").addEventListener("change", (event) => {
  if (event.target.value) $("instruct").value = event.target.value;
});
loadPresets().catch(() => {});
loadInfo().catch((error) => { $("index-info").textContent = error.message; });
const linked = new URLSearchParams(location.search);
if (linked.get("instruct")) $("instruct").value = linked.get("instruct");
if (linked.get("where")) $("where").value = linked.get("where");
if (linked.get("k")) $("k").value = linked.get("k");
if (["dense", "lexical", "hybrid"].includes(linked.get("mode"))) $("mode").value = linked.get("mode");
if (linked.get("q")) {
  $("query").value = linked.get("q");
  $("search-form").requestSubmit();
}
