// Sends the form to the JSON API (/predict) and shows the answer without leaving the page.
// Several files go as one job (POST /jobs), whose progress arrives as Server-Sent Events
// (GET /jobs/<id>/events): a row per finished image, then the whole result.
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
  const job = document.getElementById("job");
  const jobProgress = document.getElementById("job-progress");
  const jobCount = document.getElementById("job-count");
  const jobResults = document.getElementById("job-results");
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

  // With --auth keys the page has a key field; the key goes in a header, never in a URL.
  function apiKey() {
    const field = document.getElementById("api-key");
    return field ? field.value.trim() : "";
  }

  function requestHeaders() {
    const headers = { Accept: "application/json" };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    return headers;
  }

  async function pollJob(id, files, rows) {
    // EventSource cannot send a header: with a key, long-poll the job until it ends instead.
    for (;;) {
      const response = await fetch(`${form.dataset.jobs}/${id}?wait=30`, { headers: requestHeaders() });
      const body = await readBody(response);
      if (!response.ok) return showError(body.error || `The server answered HTTP ${response.status}.`);
      jobProgress.value = body.done;
      jobCount.textContent = `${body.done} / ${files.length}`;
      if (["done", "failed", "expired"].includes(body.status)) {
        (body.results || []).forEach((result, index) => {
          const name = files[index] ? files[index].name : `image ${index + 1}`;
          const top = result.predictions && result.predictions[0];
          rows[index].textContent = top ? `${name}: ${top.label}` : `${name}: ${result.error || "failed"}`;
        });
        if (!body.success) showError(body.error || "The job failed.");
        return;
      }
    }
  }

  async function readBody(response) {
    try {
      return await response.json();
    } catch {
      return { success: false, error: `The server answered HTTP ${response.status} without a readable message.` };
    }
  }

  function followJob(id, files) {
    // EventSource reconnects on its own, sending Last-Event-ID: no event is lost.
    return new Promise((resolve) => {
      const rows = files.map((file) => {
        const row = document.createElement("li");
        row.className = "job-image";
        row.textContent = `${file.name}: waiting…`;
        return row;
      });
      jobResults.replaceChildren(...rows);
      jobProgress.max = files.length;
      jobProgress.value = 0;
      jobCount.textContent = `0 / ${files.length}`;
      job.hidden = false;
      if (apiKey()) return pollJob(id, files, rows).then(resolve, resolve);
      let finished = 0;
      const source = new EventSource(`${form.dataset.jobs}/${id}/events`);
      source.addEventListener("image", (message) => {
        const image = JSON.parse(message.data);
        finished += 1;
        jobProgress.value = finished;
        jobCount.textContent = `${finished} / ${files.length}`;
        const name = files[image.index] ? files[image.index].name : `image ${image.index + 1}`;
        rows[image.index].textContent = image.label ? `${name}: ${image.label}` : `${name}: ${image.error}`;
      });
      source.addEventListener("result", (message) => {
        source.close();
        const result = JSON.parse(message.data);
        if (!result.success) showError(result.error || "The job failed.");
        resolve();
      });
    });
  }

  async function submitJob(files) {
    const response = await fetch(form.dataset.jobs, {
      method: "POST",
      body: new FormData(form),
      headers: requestHeaders(),
    });
    const body = await readBody(response);
    if (response.status !== 202) {
      showError(body.error || `The server answered HTTP ${response.status}.`);
      return;
    }
    answer.hidden = true;
    errorBox.hidden = true;
    await followJob(body.id, files);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) {
      showError("Choose an image first.");
      return;
    }
    if (input.files.length > 1) {
      button.disabled = true;
      status.textContent = "Classifying…";
      try {
        await submitJob(Array.from(input.files));
      } catch {
        showError("The server could not be reached. Check the connection and try again.");
      } finally {
        button.disabled = false;
        status.textContent = "";
      }
      return;
    }
    job.hidden = true;
    button.disabled = true;
    status.textContent = "Classifying…";
    try {
      const response = await fetch(form.dataset.api, {
        method: "POST",
        body: new FormData(form),
        headers: requestHeaders(),
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
