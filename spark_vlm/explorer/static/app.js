// The explorer page: sends the chosen picture to the JSON endpoints and shows what comes back (no model logic).
"use strict";
const $ = (id) => document.getElementById(id);
let picture = null;  // {scene: n} or {upload: base64}: what every request is about

function el(tag, attrs = {}, text = "") {
  const node = Object.assign(document.createElement(tag), attrs);
  if (text) node.textContent = text;
  return node;
}

async function post(path, body) {
  $("error").textContent = "";
  document.body.dataset.busy = "1";
  try {
    const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify({...picture, ...body})});
    let data;
    try { data = await response.json(); } catch (e) { data = {error: `the server answered ${response.status}`}; }
    if (data.error) { $("error").textContent = data.error; return null; }
    showPicture(data);
    return data;
  } catch (e) {
    $("error").textContent = `the server cannot be reached: ${e.message}`;
    return null;
  } finally {
    delete document.body.dataset.busy;
  }
}

function showPicture(data) {
  const truth = data.truth;
  $("truth").textContent = truth ? `scene ${data.scene}: ${truth.objects.join(", ")} | true caption: ` +
    truth.captions[0] : "uploaded image (no ground truth)";
  data.pairs.forEach((pair, i) => {
    $(`image-${i}`).src = data.image;
    $(`pair-error-${i}`).textContent = pair.error || "";
  });
}

async function captionPicture() {
  const mode = $("mode").value;
  const decoding = {mode, num_beams: Number($("beams").value), temperature: Number($("temperature").value),
                    seed: Number($("seed").value), max_new_tokens: Number($("max-words").value)};
  const data = await post("/api/caption", {decoding});
  if (!data) return;
  if (data.scene !== null) { picture = {scene: data.scene}; $("scene").value = data.scene; }  // "random" drawn
  data.pairs.forEach((pair, i) => {
    const words = $(`words-${i}`), overlay = $(`overlay-${i}`);
    words.replaceChildren();
    overlay.src = data.image;
    $(`chair-${i}`).textContent = pair.chair ? `CHAIR: ${pair.chair.hallucinated.length} hallucinated object ` +
      `word(s); scene objects: ${pair.chair.truth.join(", ")}` : "";
    $(`how-${i}`).textContent = pair.attribution ? `where the word looked: ${pair.attribution}` : "";
    (pair.words || []).forEach((word) => {
      const button = el("button", {className: "word"}, word.text);
      if (word.hallucinated === true) { button.classList.add("hallucinated"); button.title = "not in the scene"; }
      if (word.hallucinated === false) { button.classList.add("grounded"); button.title = "in the scene"; }
      button.onclick = () => {
        words.querySelectorAll(".word").forEach((b) => b.classList.remove("active"));
        button.classList.add("active");
        overlay.src = word.overlay;
      };
      words.append(button);
    });
  });
}

async function alignTyped() {
  const data = await post("/api/align", {caption: $("typed").value});
  if (!data) return;
  data.pairs.forEach((pair, i) => {
    const box = $(`tokens-${i}`);
    box.replaceChildren();
    (pair.tokens || []).forEach((t) => {
      const figure = el("figure");
      figure.append(el("img", {src: t.overlay, alt: t.token}), el("figcaption", {}, t.token));
      box.append(figure);
    });
  });
}

async function askPope() {
  const data = await post("/api/pope", {object: $("object").value});
  if (!data) return;
  data.pairs.forEach((pair, i) => {
    $(`pope-${i}`).textContent = pair.answer ? `${pair.question} model: ${pair.answer}` +
      (pair.truth ? ` | truth: ${pair.truth}` : "") : "";
  });
}

function readUpload(file) {
  const reader = new FileReader();
  reader.onload = () => {
    picture = {upload: reader.result.split(",", 2)[1] || ""};
    captionPicture();
  };
  reader.readAsDataURL(file);
}

async function init() {
  const info = await (await fetch("/api/info")).json();
  $("scene").max = info.scenes - 1;
  info.objects.forEach((name) => $("object").append(el("option", {value: name}, name)));
  info.pairs.forEach((pair, i) => {
    const column = el("div", {className: "pair", id: `pair-${i}`});
    column.innerHTML = `<h2></h2><div class="images"><img id="image-${i}" alt="image">` +
      `<img id="overlay-${i}" alt="where the word looked"></div><div class="pair-error" id="pair-error-${i}"></div>` +
      `<div id="words-${i}"></div><div class="note" id="how-${i}"></div><div class="note" id="chair-${i}"></div>` +
      `<div id="pope-${i}"></div><div class="tokens" id="tokens-${i}"></div>`;
    column.querySelector("h2").textContent = pair.name + (pair.oracle ? " (oracle vision: object tokens)" : "");
    $("pairs").append(column);
  });
  $("show-scene").onclick = () => { picture = {scene: Number($("scene").value)}; captionPicture(); };
  $("random-scene").onclick = () => { picture = {scene: "random"}; captionPicture(); };
  $("upload").onchange = (e) => { if (e.target.files.length) readUpload(e.target.files[0]); };
  $("align").onclick = () => picture ? alignTyped() : ($("error").textContent = "choose a picture first");
  $("ask").onclick = () => picture ? askPope() : ($("error").textContent = "choose a picture first");
  document.body.dataset.ready = "1";
}

init();
