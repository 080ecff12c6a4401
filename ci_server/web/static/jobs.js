// The jobs page, live: rows of new and changed jobs arrive as server-rendered HTML.
"use strict";
(function () {
  const table = document.getElementById("jobs");
  if (!table || !table.dataset.live) return;
  const body = table.tBodies[0];
  const source = new EventSource(table.dataset.live);
  source.addEventListener("job", (message) => {
    const { id, html } = JSON.parse(message.data);
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const row = template.content.firstElementChild;
    const old = document.getElementById(`job-${id}`);
    if (old) {
      // A keyboard user's focus stays on the row's link while its status changes.
      const focused = old.contains(document.activeElement);
      old.replaceWith(row);
      if (focused) row.querySelector("a").focus();
    } else body.prepend(row);
    const empty = document.getElementById("no-jobs");
    if (empty) empty.remove();
  });
  source.addEventListener("unauthorized", () => source.close());
})();
