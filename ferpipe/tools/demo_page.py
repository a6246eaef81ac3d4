"""The page `ferpipe-demo` serves (`ferpipe.tools.demo`): one HTML file with its CSS and script,
nothing loaded from elsewhere, so it works offline.

A photo comes from a file (the picker or dropped on the page), the clipboard (Ctrl-V anywhere on
the page) or the webcam (browsers allow cameras only on http://127.0.0.1, localhost or HTTPS).
The script posts its bytes to `/api/predict?name=...` and shows the annotated photo, one card
per face with a bar for each class's probability, and the JSON lines `ferpipe-predict --json`
would print; a refused file shows the server's one-line reason. `?example=NAME` on the page's
address runs the example photo `/example/NAME.png` on load (the README's screenshot).
"""

from __future__ import annotations

import html
import json

#: The page's title, also its heading.
TITLE = "ferpipe-demo: facial expressions"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem;
         padding: 0 1rem; color: #1d232a; }
  h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
  #model { color: #555; margin: 0 0 1rem; font-family: ui-monospace, monospace; font-size: .9rem; }
  .inputs { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center;
            border: 2px dashed #9aa5b1; border-radius: .5rem; padding: .75rem 1rem; }
  .inputs.over { border-color: #0b7a3e; background: #eef8f1; }
  button, label.button { font: inherit; padding: .35rem .8rem; border: 1px solid #9aa5b1;
                         border-radius: .35rem; background: #f4f6f8; cursor: pointer; }
  #file { display: none; }
  #camera { display: none; margin-top: .75rem; }
  #camera video { max-width: 24rem; border-radius: .35rem; background: #000; }
  #status { margin: .75rem 0; min-height: 1.25rem; }
  #error { color: #b00020; font-weight: 600; }
  .result { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
  #annotated { max-width: min(100%, 36rem); border-radius: .35rem; }
  .faces { flex: 1; min-width: 20rem; display: grid; gap: 1rem; }
  .face { border: 1px solid #d5dbe1; border-radius: .5rem; padding: .6rem .9rem; }
  .face h2 { font-size: 1rem; margin: 0 0 .4rem; }
  .face .note { color: #8a5a00; font-size: .85rem; margin: 0 0 .4rem; }
  .bar { display: grid; grid-template-columns: 5.5rem 1fr 3.5rem; gap: .5rem;
         align-items: center; font-size: .9rem; margin: .2rem 0; }
  .bar .track { background: #eceff2; border-radius: .25rem; height: .9rem; }
  .bar .fill { background: #6b8fb3; border-radius: .25rem; height: 100%; }
  .bar.top .fill { background: #0b7a3e; }
  .bar .value { text-align: right; font-variant-numeric: tabular-nums; }
  pre { background: #f4f6f8; padding: .5rem; overflow-x: auto; font-size: .8rem; }
</style>
</head>
<body>
<h1>{{title}}</h1>
<p id="model">{{model}}</p>
<div class="inputs" id="inputs">
  <label class="button" for="file">Upload a photo</label>
  <input type="file" id="file" accept="image/*">
  <button type="button" id="webcam">Webcam</button>
  <button type="button" id="example">Example photo</button>
  <span>or drop a photo here, or paste one (Ctrl-V)</span>
</div>
<div id="camera">
  <video id="video" autoplay playsinline muted></video><br>
  <button type="button" id="snap">Take the photo</button>
</div>
<p id="status" role="status"></p>
<p id="error" role="alert"></p>
<div class="result">
  <img id="annotated" alt="the photo with a box and label on each face" hidden>
  <div class="faces" id="faces"></div>
</div>
<details id="json" hidden><summary>JSON lines, as <code>ferpipe-predict --json</code> prints
  them</summary><pre id="lines"></pre></details>
<script>
"use strict";
const CLASSES = {{classes}};
const $ = (id) => document.getElementById(id);
const pct = (p) => (100 * p).toFixed(1) + "%";

function clear() {
  $("error").textContent = "";
  $("faces").replaceChildren();
  $("annotated").hidden = true;
  $("json").hidden = true;
}

function faceCard(face) {
  const card = document.createElement("section");
  card.className = "face";
  const title = document.createElement("h2");
  const [x, y, w, h] = face.box;
  title.textContent = `Face ${face.face + 1}: ${face.expression} ${pct(face.probability)}` +
    ` (box ${x},${y} ${w}x${h})`;
  card.append(title);
  if (face.whole_image) {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = "No face found: the whole photo was classified.";
    card.append(note);
  }
  for (const name of CLASSES) {
    const p = face.probabilities[name];
    const row = document.createElement("div");
    row.className = name === face.expression ? "bar top" : "bar";
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = pct(p);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = pct(p);
    row.append(label, track, value);
    card.append(row);
  }
  return card;
}

async function submit(blob, name) {
  clear();
  $("status").textContent = `Classifying ${name} ...`;
  let answer;
  try {
    const response = await fetch("/api/predict?name=" + encodeURIComponent(name),
                                 {method: "POST", body: blob});
    answer = await response.json();
  } catch (err) {
    answer = {error: `the demo server did not answer (${err})`};
  }
  $("status").textContent = "";
  if (answer.error) {
    $("error").textContent = `${name}: ${answer.error}`;
    return;
  }
  $("annotated").src = answer.image;
  $("annotated").hidden = false;
  $("faces").replaceChildren(...answer.faces.map(faceCard));
  $("lines").textContent = answer.faces.map((f) => JSON.stringify(f)).join("\\n");
  $("json").hidden = false;
  $("status").textContent = `${name}: ${answer.faces.length} face(s)`;
}

async function runExample(example) {
  const response = await fetch(`/example/${encodeURIComponent(example)}.png`);
  if (!response.ok) {
    $("error").textContent = `example ${example}: not found`;
    return;
  }
  await submit(await response.blob(), `${example}.png`);
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) submit(file, file.name);
  $("file").value = "";
});
$("example").addEventListener("click", () => runExample("astronaut"));
const inputs = $("inputs");
inputs.addEventListener("dragover", (e) => { e.preventDefault(); inputs.classList.add("over"); });
inputs.addEventListener("dragleave", () => inputs.classList.remove("over"));
inputs.addEventListener("drop", (e) => {
  e.preventDefault();
  inputs.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) submit(file, file.name);
});
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) {
    if (item.kind === "file") {
      const file = item.getAsFile();
      submit(file, file.name && file.name !== "image.png" ? file.name : "pasted image");
      return;
    }
  }
  $("error").textContent = "paste: the clipboard holds no image";
});
$("webcam").addEventListener("click", async () => {
  clear();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("error").textContent = "webcam: the browser allows cameras only on http://127.0.0.1, " +
      "localhost or HTTPS; open the demo there";
    return;
  }
  try {
    $("video").srcObject = await navigator.mediaDevices.getUserMedia({video: true});
    $("camera").style.display = "block";
  } catch (err) {
    $("error").textContent = `webcam: ${err.message || err}`;
  }
});
$("snap").addEventListener("click", () => {
  const video = $("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => submit(blob, "webcam.png"), "image/png");
});
const example = new URLSearchParams(location.search).get("example");
if (example) runExample(example);
</script>
</body>
</html>
"""


def page(model: str, class_names: list[str]) -> str:
    """The page's HTML, naming `model` (one line, e.g. `default_model()`'s description) under the
    title and drawing a bar per class of `class_names` (the model's output order)."""
    return (_PAGE.replace("{{title}}", html.escape(TITLE))
            .replace("{{model}}", html.escape(model))
            .replace("{{classes}}", json.dumps(class_names).replace("</", "<\\/")))
