"""``GET /``: a prompt box, a button and the image; plain HTML and JavaScript, nothing loaded
from elsewhere (the security policy allows only this page's own requests and its image)."""

PAGE_SECURITY_POLICY = ("default-src 'none'; connect-src 'self'; img-src blob:; style-src 'unsafe-inline'; "
                        "script-src 'unsafe-inline'; form-action 'none'; base-uri 'none'")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ERNIE-ViLG 2.0</title>
<style>
  body { font-family: system-ui, "Noto Sans CJK SC", sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  form { display: grid; gap: .5rem; }
  input, select, button { font: inherit; padding: .3rem; }
  #prompt { width: 100%; box-sizing: border-box; }
  .settings { display: flex; flex-wrap: wrap; gap: .5rem 1rem; }
  .settings label { display: flex; flex-direction: column; font-size: .9rem; }
  .settings input { width: 7rem; }
  #status { min-height: 1.5em; }
  #status.error { color: #b00020; }
  #image { width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
</style>
</head>
<body>
<h1>ERNIE-ViLG 2.0</h1>
<form id="form">
  <label for="prompt">Prompt</label>
  <input id="prompt" name="prompt" maxlength="1000" required autofocus placeholder="红苹果 / a red apple">
  <div class="settings">
    <label>Negative prompt <input id="negative_prompt" maxlength="1000"></label>
    <label>Seed (empty: random) <input id="seed" type="number" min="0" step="1"></label>
    <label>Steps <input id="steps" type="number" min="1" step="1" value="25"></label>
    <label>Guidance <input id="guidance" type="number" min="0" step="0.1" value="2.1"></label>
    <label>Sampler <select id="sampler"><option value="dpm">DPM-Solver++</option><option value="ddim">DDIM</option></select></label>
  </div>
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status" role="status"></p>
<figure>
  <img id="image" alt="" hidden>
  <figcaption id="caption"></figcaption>
</figure>
<script>
"use strict";
const $ = id => document.getElementById(id);
let imageUrl = null;

function settings() {
  const body = {prompt: $("prompt").value, sampler: $("sampler").value};
  if ($("negative_prompt").value) body.negative_prompt = $("negative_prompt").value;
  for (const [name, parse] of [["seed", Number], ["steps", Number], ["guidance", Number]]) {
    if ($(name).value !== "") body[name] = parse($(name).value);
  }
  return body;
}

$("form").addEventListener("submit", async event => {
  event.preventDefault();
  const status = $("status"), button = $("generate"), body = settings();
  button.disabled = true;
  status.className = "";
  status.textContent = "Generating…";
  try {
    const response = await fetch("/generate", {
      method: "POST", headers: {"Content-Type": "application/json", "Accept": "image/png"},
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    const blob = await response.blob();
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(blob);
    const image = $("image");
    image.src = imageUrl;
    image.alt = body.prompt;
    image.hidden = false;
    $("caption").textContent = body.prompt + " (seed " + response.headers.get("X-Seed") + ")";
    status.textContent = "";
  } catch (error) {
    status.className = "error";
    status.textContent = error.message;
  } finally {
    button.disabled = false;
  }
});
</script>
</body>
</html>
"""
