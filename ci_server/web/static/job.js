// One job's page: follows its log live (the last TAIL events first), loads earlier lines
// on demand, keeps at most MAX_LINES lines in the page, and refreshes the details and the
// tests when the job's status changes.
"use strict";
(function () {
  const TAIL = 1000;
  const MAX_LINES = 5000;
  const log = document.getElementById("log");
  if (!log) return;
  const jobId = log.dataset.job;
  const lines = document.getElementById("log-lines");
  const follow = document.getElementById("follow");
  const earlier = document.getElementById("log-earlier");
  const state = document.getElementById("log-state");
  let firstSeq = null; // the oldest event shown
  let pending = [];
  let drawing = false;

  function describe(event) {
    if (event.type === "status") return `status: ${event.status}`;
    if (event.type === "end") {
      const code = event.exit_code === null || event.exit_code === undefined ? "" : `, exit code ${event.exit_code}`;
      return `ended: ${event.status}${code}`;
    }
    return `${event.type}`;
  }

  function lineOf(event) {
    const div = document.createElement("div");
    div.className = "line";
    div.dataset.seq = event.seq;
    if (event.type === "log") {
      if (event.stream === "system") div.classList.add("system");
      div.append(window.ansiFragment(String(event.text ?? "")));
    } else {
      div.classList.add("system");
      div.textContent = describe(event);
    }
    return div;
  }

  function atEnd() {
    return lines.scrollHeight - lines.scrollTop - lines.clientHeight < 24;
  }

  function showEarlierButton(more) {
    earlier.hidden = !more;
  }

  function draw() {
    drawing = false;
    const batch = pending;
    pending = [];
    const fragment = document.createDocumentFragment();
    for (const event of batch) fragment.append(lineOf(event));
    lines.append(fragment);
    let extra = lines.childElementCount - MAX_LINES;
    while (extra-- > 0) lines.firstElementChild.remove();
    if (lines.firstElementChild) {
      firstSeq = Number(lines.firstElementChild.dataset.seq);
      showEarlierButton(firstSeq > 1);
    }
    if (follow.checked) lines.scrollTop = lines.scrollHeight;
  }

  function queue(event) {
    pending.push(event);
    if (!drawing) {
      drawing = true;
      requestAnimationFrame(draw);
    }
  }

  async function refresh(part) {
    const response = await fetch(`/job/${jobId}/${part}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const html = await response.text();
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const fresh = template.content.firstElementChild;
    const old = document.getElementById(part);
    if (fresh && old) old.replaceWith(fresh);
  }

  const source = new EventSource(`/job/${jobId}/events?tail=${TAIL}`);
  state.textContent = "connecting…";
  source.onopen = () => { state.textContent = "live"; };
  source.onerror = () => { if (source.readyState !== EventSource.CLOSED) state.textContent = "reconnecting…"; };
  const take = (message) => {
    const event = JSON.parse(message.data);
    queue(event);
    return event;
  };
  source.addEventListener("log", take);
  source.addEventListener("status", (message) => {
    take(message);
    refresh("details");
  });
  source.addEventListener("end", (message) => {
    take(message);
    source.close();
    state.textContent = "ended";
    refresh("details");
    refresh("tests");
  });
  source.addEventListener("unauthorized", () => {
    source.close();
    state.textContent = "signed out: reload to sign in again";
  });

  lines.addEventListener("scroll", () => {
    follow.checked = atEnd();
  });
  follow.addEventListener("change", () => {
    if (follow.checked) lines.scrollTop = lines.scrollHeight;
  });

  earlier.addEventListener("click", async () => {
    if (firstSeq === null) return;
    earlier.disabled = true;
    try {
      const response = await fetch(`/job/${jobId}/log?before=${firstSeq}`, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = await response.json();
      const fragment = document.createDocumentFragment();
      for (const event of page.events) fragment.append(lineOf(event));
      const height = lines.scrollHeight;
      lines.prepend(fragment);
      lines.scrollTop += lines.scrollHeight - height; // the lines in view stay in view
      if (lines.firstElementChild) firstSeq = Number(lines.firstElementChild.dataset.seq);
      showEarlierButton(page.more);
    } finally {
      earlier.disabled = false;
    }
  });
})();
