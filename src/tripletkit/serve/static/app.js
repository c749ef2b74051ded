// The page of `tripletkit serve`: search, identify a photo, manage the gallery.
// Plain JavaScript, no build step. Data from the API is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);

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
  if (!response.ok) throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
  return body;
}

function writeHeaders() {
  const token = $("token").value.trim();
  sessionStorage.setItem("tripletkit-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function count(n, one, many = `${one}s`) {
  return `${n.toLocaleString("en")} ${n === 1 ? one : many}`;
}

function say(id, text, bad = false) {
  $(id).textContent = text;
  $(id).classList.toggle("bad", bad);
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

function sayHealth(health) {
  const parts = [];
  if (health.search) parts.push(count(health.documents, "document"));
  if (health.faces) parts.push(`${count(health.faces_enrolled, "face")} enrolled`);
  say("status", `ready · ${parts.join(" · ")}`);
}

async function refreshStatus() {
  try {
    sayHealth(await api("/health"));
  } catch (err) {
    say("status", err.message, true);
  }
}

async function checkHealth() {
  try {
    const health = await api("/health");
    sayHealth(health);
    if (!health.search) say("search-info", "No search index loaded (start with --index).", true);
    if (!health.search && health.faces) showPanel("identify");
    if (!health.faces) {
      say("identify-info", "No face gallery loaded (start with --gallery).", true);
      say("gallery-info", "No face gallery loaded (start with --gallery).", true);
    }
  } catch (err) {
    say("status", err.message.startsWith("503") ? "loading the models…" : err.message, true);
    setTimeout(checkHealth, 1000);
  }
}

// --- search -----------------------------------------------------------------------------------

let searchTimer = null;
let searchSeq = 0;

async function search() {
  const q = $("search-input").value.trim();
  const seq = ++searchSeq;
  if (!q) {
    $("search-results").replaceChildren();
    say("search-info", "");
    return;
  }
  try {
    const body = await api(`/api/search?q=${encodeURIComponent(q)}&k=10`);
    if (seq !== searchSeq) return; // a newer query is on its way
    $("search-results").replaceChildren(...body.results.map(resultItem));
    say("search-info", `${body.results.length} results in ${body.took_ms.toFixed(1)} ms` +
      (body.note ? ` · ${body.note}` : ""));
  } catch (err) {
    if (seq === searchSeq) say("search-info", err.message, true);
  }
}

function resultItem(hit) {
  const item = el("li", "result");
  item.append(el("span", "score", hit.score.toFixed(3)), el("div", "title", hit.title || hit.id));
  if (hit.snippet) item.append(el("p", "snippet", hit.snippet));
  return item;
}

// --- identify ---------------------------------------------------------------------------------

async function identify(file) {
  if (!file) return;
  say("identify-info", `Looking at ${file.name}…`);
  const url = URL.createObjectURL(file);
  const img = el("img");
  img.alt = file.name;
  img.src = url;
  $("identify-result").replaceChildren(img);
  $("identify-faces").replaceChildren();
  const form = new FormData();
  form.append("image", file);
  try {
    const body = await api("/api/faces/identify?k=3", { method: "POST", body: form });
    for (const face of body.faces) drawFace(face, body.width, body.height);
    $("identify-faces").replaceChildren(...body.faces.map(faceItem));
    const known = body.faces.filter((f) => f.name).length;
    say("identify-info", body.faces.length
      ? `${count(body.faces.length, "face")}, ${known} recognised (threshold ${body.threshold}) in ${body.took_ms.toFixed(0)} ms`
      : "No face found in this photo.");
  } catch (err) {
    say("identify-info", err.message, true);
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

// --- gallery ----------------------------------------------------------------------------------

async function loadPeople() {
  try {
    const people = await api("/api/faces/people");
    $("people").replaceChildren(...people.map(personItem));
    say("gallery-info", people.length ? count(people.length, "person", "people") : "Nobody enrolled yet.");
  } catch (err) {
    say("gallery-info", err.message, true);
  }
}

function personItem(person) {
  const item = el("li", "person");
  item.dataset.name = person.name;
  const head = el("header");
  const remove = el("button", "delete", "Delete");
  remove.type = "button";
  remove.setAttribute("aria-label", `Delete ${person.name}`);
  remove.addEventListener("click", () => deletePerson(person.name));
  head.append(el("span", "person-name", person.name), remove);
  const thumbs = el("div", "thumbs");
  for (const face of person.faces) {
    if (!face.thumbnail) continue;
    const img = el("img");
    img.src = face.thumbnail;
    img.alt = `${person.name}, face ${face.id}`;
    img.loading = "lazy";
    thumbs.append(img);
  }
  item.append(head, el("small", "", count(person.faces.length, "face")), thumbs);
  return item;
}

async function enroll(event) {
  event.preventDefault();
  const name = $("enroll-name").value.trim();
  const files = $("enroll-files").files;
  const form = new FormData();
  form.append("name", name);
  for (const file of files) form.append("image", file);
  say("gallery-info", `Enrolling ${name}…`);
  try {
    const person = await api("/api/faces/enroll", {
      method: "POST", body: form, headers: writeHeaders(),
    });
    $("enroll-form").reset();
    $("token").value = sessionStorage.getItem("tripletkit-token") || "";
    await Promise.all([loadPeople(), refreshStatus()]);
    say("gallery-info", `Enrolled ${person.name} (${count(person.faces.length, "face")}).`);
  } catch (err) {
    say("gallery-info", err.message, true);
  }
}

async function deletePerson(name) {
  if (!window.confirm(`Delete ${name} and all their faces?`)) return;
  try {
    await api(`/api/faces/people/${encodeURIComponent(name)}`, {
      method: "DELETE", headers: writeHeaders(),
    });
    await Promise.all([loadPeople(), refreshStatus()]);
    say("gallery-info", `Deleted ${name}.`);
  } catch (err) {
    say("gallery-info", err.message, true);
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
  $("enroll-form").addEventListener("submit", enroll);
  $("token").value = sessionStorage.getItem("tripletkit-token") || "";
  checkHealth();
});
