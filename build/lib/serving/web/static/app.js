// Sends the form to the JSON API (/predict) and shows the answer without leaving the page.
// Without JavaScript the same form posts to / and the server renders the answer itself.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  const input = document.getElementById("image");
  const button = document.getElementById("submit");
  const status = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const answer = document.getElementById("answer");
  const thumbnail = document.getElementById("thumbnail");
  const list = document.getElementById("predictions");
  let thumbnailUrl = null;

  function showError(message) {
    answer.hidden = true;
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function predictionRow(prediction) {
    const row = document.createElement("li");
    row.className = "prediction";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = prediction.label;
    label.title = prediction.label;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = prediction.probability;
    const percent = document.createElement("span");
    percent.className = "probability";
    percent.textContent = (prediction.probability * 100).toFixed(1) + "%";
    row.append(label, bar, percent);
    return row;
  }

  function showAnswer(body, file) {
    if (thumbnailUrl) URL.revokeObjectURL(thumbnailUrl);
    thumbnailUrl = URL.createObjectURL(file);
    thumbnail.src = thumbnailUrl;
    list.replaceChildren(...body.predictions.map(predictionRow));
    document.getElementById("model-name").textContent = body.model ? body.model.name : "";
    document.getElementById("model-note").textContent = (body.model && body.model.note) || "";
    document.getElementById("total-ms").textContent = body.timings_ms ? body.timings_ms.total : "";
    errorBox.hidden = true;
    answer.hidden = false;
  }

  async function readBody(response) {
    try {
      return await response.json();
    } catch {
      return { success: false, error: `The server answered HTTP ${response.status} without a readable message.` };
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) {
      showError("Choose an image first.");
      return;
    }
    button.disabled = true;
    status.textContent = "Classifying…";
    try {
      const response = await fetch(form.dataset.api, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json" },
      });
      const body = await readBody(response);
      if (response.ok && body.success) {
        showAnswer(body, file);
      } else {
        showError(body.error || `The server answered HTTP ${response.status}.`);
      }
    } catch {
      showError("The server could not be reached. Check the connection and try again.");
    } finally {
      button.disabled = false;
      status.textContent = "";
    }
  });
});
