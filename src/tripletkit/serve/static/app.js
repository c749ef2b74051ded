// The page of `tripletkit serve`: search, identify a photo, compare two, manage the gallery.
// Plain JavaScript, no build step. Data from the API is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const byName = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json")
    ? await response.json()
    : null;
  if (!response.ok) {
    let message = (body && body.detail) || `${response.status} ${response.statusText}`;
    if (response.status === 401) message += " (enter the access token, top right)";
    throw new Error(message);
  }
  return body;
}

// The token, when the service has one, for writes and (with a read token) for the faces' reads.
function authHeaders() {
  const token = $("token").value.trim();
  sessionStorage.setItem("tripletkit-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function count(n, one, many = `${one}s`) {
  return `${n.toLocaleString("en")} ${n === 1 ? one : many}`;
}

// tone: "" (plain), "busy" (something is on its way: not an error) or "bad" (it failed)
function say(id, text, tone = "") {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("bad", tone === "bad");
  node.classList.toggle("busy", tone === "busy");
}

// --- tabs and health --------------------------------------------------------------------------

function showPanel(name) {
  for (const tab of document.querySelectorAll("#tabs button")) {
    const selected = tab.dataset.panel === name;
    tab.setAttribute("aria-selected", String(selected));
    $(`panel-${tab.dataset.panel}`).hidden = !selected;
  }
  if (name === "gallery") loadPeople();
}

let firstHealth = true;
let searchWaiting = false;

function buildProgress(part) {
  if (part.total) {
    const share = Math.floor((100 * (part.done || 0)) / part.total);
    const done = (part.done || 0).toLocaleString("en");
    return `building the search index: ${share}% (${done} of ` +
      `${count(part.total, "document")})`;
  }
  return `preparing the search index${part.detail ? ` (${part.detail})` : ""}…`;
}

function showHealth(health) {
  const parts = health.parts || {};
  const search = parts.search || { status: health.search ? "ready" : "off" };
  const faces = parts.faces || { status: health.faces ? "ready" : "off" };
  if (health.status === "failed" || health.status === "stopped") {
    say("status", health.detail || `the service has ${health.status}`, "bad");
    return;
  }
  const bits = [];
  if (search.status === "ready") bits.push(count(health.documents, "document"));
  else if (search.status === "building") bits.push(buildProgress(search));
  else if (search.status === "loading") bits.push("loading the search index…");
  if (faces.status === "ready") bits.push(`${count(health.faces_enrolled, "face")} enrolled`);
  else if (faces.status === "loading") bits.push("loading the face model…");
  const ready = health.status === "ready";
  say("status", `${ready ? "ready · " : ""}${bits.join(" · ")}`, ready ? "" : "busy");

  if (search.status === "off") {
    say("search-info", "No search index loaded (start with --index).", "bad");
  } else if (search.status !== "ready") {
    searchWaiting = true;
    say("search-info", `Search is not ready yet: ${bits[0]}. Faces work meanwhile.`, "busy");
  } else if (searchWaiting) {
    searchWaiting = false;
    say("search-info", "The search index is ready.");
  }
  if (faces.status === "off") {
    say("identify-info", "No face gallery loaded (start with --gallery).", "bad");
    say("verify-info", "No face gallery loaded (start with --gallery).", "bad");
    say("gallery-info", "No face gallery loaded (start with --gallery).", "bad");
  }
  if (firstHealth && search.status === "off" && faces.status !== "off") showPanel("identify");
  firstHealth = false;
}

async function fetchHealth() {
  const response = await fetch("/health");
  return response.json(); // 200 when ready, 503 while loading: both JSON
}

async function refreshStatus() {
  try {
    showHealth(await fetchHealth());
  } catch (err) {
    say("status", `cannot reach the service (${err.message})`, "bad");
  }
}

async function watchHealth() {
  let health = null;
  try {
    health = await fetchHealth();
    showHealth(health);
  } catch (err) {
    say("status", `cannot reach the service (${err.message}); trying again…`, "bad");
  }
  if (!health || health.status === "loading") setTimeout(watchHealth, 1000);
}

// --- search -----------------------------------------------------------------------------------

let searchTimer = null;
let searchSeq = 0;

async function search() {
  const q = $("search-input").value.trim();
  const seq = ++searchSeq;
  if (!q) {
    $("search-results").replaceChildren();
    if (!searchWaiting) say("search-info", "");
    return;
  }
  try {
    const body = await api(`/api/search?q=${encodeURIComponent(q)}&k=10`);
    if (seq !== searchSeq) return; // a newer query is on its way
    $("search-results").replaceChildren(...body.results.map(resultItem));
    say("search-info", `${body.results.length} results in ${body.took_ms.toFixed(1)} ms` +
      (body.note ? ` · ${body.note}` : ""));
  } catch (err) {
    if (seq === searchSeq) say("search-info", err.message, searchWaiting ? "busy" : "bad");
  }
}

function resultItem(hit) {
  const item = el("li", "result");
  item.append(el("span", "score", hit.score.toFixed(3)), el("div", "title", hit.title || hit.id));
  if (hit.snippet) item.append(el("p", "snippet", hit.snippet));
  return item;
}

// --- identify ---------------------------------------------------------------------------------

// A preview of a chosen file; gone (no broken-image icon) when the browser cannot show it.
function preview(file) {
  const img = el("img");
  img.alt = file.name;
  img.addEventListener("error", () => img.remove());
  img.addEventListener("load", () => URL.revokeObjectURL(img.src));
  img.src = URL.createObjectURL(file);
  return img;
}

async function identify(file) {
  if (!file) return;
  say("identify-info", `Looking at ${file.name}…`, "busy");
  $("identify-result").replaceChildren(preview(file));
  $("identify-faces").replaceChildren();
  const form = new FormData();
  form.append("image", file);
  try {
    const body = await api("/api/faces/identify?k=3", {
      method: "POST", body: form, headers: authHeaders(),
    });
    for (const face of body.faces) drawFace(face, body.width, body.height);
    $("identify-faces").replaceChildren(...body.faces.map(faceItem));
    const known = body.faces.filter((f) => f.name).length;
    say("identify-info", body.faces.length
      ? `${count(body.faces.length, "face")}, ${known} recognised (threshold ${body.threshold}) in ${body.took_ms.toFixed(0)} ms`
      : "No face found in this photo.");
  } catch (err) {
    $("identify-result").replaceChildren(); // no photo left standing for an answer that failed
    say("identify-info", err.message, "bad");
  }
}

function drawFace(face, width, height) {
  const box = el("div", face.name ? "face-box" : "face-box unknown");
  if (face.box.top < 0.08 * height) box.classList.add("at-top"); // label below, inside the photo
  const pct = (v, total) => `${(100 * v) / total}%`;
  box.style.left = pct(face.box.left, width);
  box.style.top = pct(face.box.top, height);
  box.style.width = pct(face.box.right - face.box.left, width);
  box.style.height = pct(face.box.bottom - face.box.top, height);
  box.append(el("span", "face-label", face.decision));
  $("identify-result").append(box);
}

function faceItem(face) {
  const near = face.matches.map((m) => `${m.name} ${m.distance.toFixed(3)}`).join(", ");
  return el("li", "", `${face.decision}${near ? ` — nearest: ${near}` : ""}`);
}

function setUpDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    identify(e.dataTransfer.files[0]);
  });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("photo-input").click(); }
  });
  $("photo-input").addEventListener("change", (e) => identify(e.target.files[0]));
}

// --- verify -----------------------------------------------------------------------------------

async function verify(event) {
  event.preventDefault();
  const [a, b] = [$("verify-a").files[0], $("verify-b").files[0]];
  if (!a || !b) return;
  const form = new FormData();
  form.append("image", a);
  form.append("image", b);
  say("verify-info", `Comparing ${a.name} and ${b.name}…`, "busy");
  try {
    const body = await api("/api/faces/verify", {
      method: "POST", body: form, headers: authHeaders(),
    });
    const distance = body.distance.toFixed(3);
    say("verify-info", body.same
      ? `Same person: distance ${distance}, within the threshold ${body.threshold}.`
      : `Different people: distance ${distance}, beyond the threshold ${body.threshold}.`);
  } catch (err) {
    say("verify-info", err.message, "bad");
  }
}

// --- gallery ----------------------------------------------------------------------------------

async function loadPeople() {
  try {
    const people = await api("/api/faces/people", { headers: authHeaders() });
    people.sort((a, b) => byName.compare(a.name, b.name));
    $("people").replaceChildren(...people.map(personItem));
    say("gallery-info", people.length ? count(people.length, "person", "people") : "Nobody enrolled yet.");
  } catch (err) {
    say("gallery-info", err.message, "bad");
  }
}

// Thumbnails are fetched (with the token, when reads need one) and shown from memory; one that
// cannot be fetched is a plain placeholder, not a broken image.
async function showThumbnail(img, url) {
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) throw new Error(String(response.status));
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    img.src = URL.createObjectURL(await response.blob());
  } catch {
    img.replaceWith(el("span", "thumb-missing", "?"));
  }
}

function button(className, text, label, action) {
  const node = el("button", className, text);
  node.type = "button";
  node.setAttribute("aria-label", label);
  node.addEventListener("click", action);
  return node;
}

function personItem(person) {
  const item = el("li", "person");
  item.dataset.name = person.name;
  const head = el("header");
  const actions = el("span", "actions");
  actions.append(
    button("rename", "Rename", `Rename ${person.name}`, () => renamePerson(person.name)),
    button("delete", "Delete", `Delete ${person.name}`, () => deletePerson(person.name)),
  );
  head.append(el("span", "person-name", person.name), actions);
  const thumbs = el("div", "thumbs");
  for (const face of person.faces) {
    if (!face.thumbnail) continue;
    const img = el("img");
    img.alt = `${person.name}, face ${face.id}`;
    img.width = img.height = 48;
    thumbs.append(img);
    showThumbnail(img, face.thumbnail);
  }
  item.append(head, el("small", "", count(person.faces.length, "face")), thumbs);
  return item;
}

// One request key per filled-in form: submitting the same form again after a lost answer
// (a timeout, a dropped connection) replays the first enrollment instead of adding it twice.
let enrollKey = null;

function requestKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // also without HTTPS
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function enroll(event) {
  event.preventDefault();
  enrollKey = enrollKey || requestKey();
  const name = $("enroll-name").value.trim();
  const files = $("enroll-files").files;
  const form = new FormData();
  form.append("name", name);
  for (const file of files) form.append("image", file);
  say("gallery-info", `Enrolling ${name}…`, "busy");
  try {
    const person = await api("/api/faces/enroll", {
      method: "POST", body: form, headers: { ...authHeaders(), "Idempotency-Key": enrollKey },
    });
    enrollKey = null;
    $("enroll-form").reset();
    await Promise.all([loadPeople(), refreshStatus()]);
    say("gallery-info", `Enrolled ${person.name} (${count(person.faces.length, "face")}).`);
  } catch (err) {
    say("gallery-info", err.message, "bad");
  }
}

function personPath(name) {
  return `/api/faces/people/${encodeURIComponent(name)}`;
}

async function renamePerson(name) {
  const answer = window.prompt(`New name for ${name}:`, name);
  const next = answer === null ? "" : answer.trim();
  if (!next || next === name) return;
  try {
    const person = await api(personPath(name), {
      method: "PATCH",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify({ name: next }),
    });
    await loadPeople();
    say("gallery-info", `Renamed ${name} to ${person.name}.`);
  } catch (err) {
    say("gallery-info", err.message, "bad");
  }
}

async function deletePerson(name) {
  if (!window.confirm(`Delete ${name} and all their faces?`)) return;
  try {
    await api(personPath(name), { method: "DELETE", headers: authHeaders() });
    await Promise.all([loadPeople(), refreshStatus()]);
    say("gallery-info", `Deleted ${name}.`);
  } catch (err) {
    say("gallery-info", err.message, "bad");
  }
}

// --- start ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll("#tabs button")) {
    tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  }
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(searchTimer);
    search();
  });
  $("search-input").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(search, 250);
  });
  setUpDropZone();
  $("verify-form").addEventListener("submit", verify);
  $("enroll-form").addEventListener("submit", enroll);
  $("enroll-form").addEventListener("input", () => { enrollKey = null; }); // another request
  $("token").value = sessionStorage.getItem("tripletkit-token") || "";
  watchHealth();
});
