// The study page: the Grad-CAM overlay toggle, and the review buttons following the editor.
(function () {
  "use strict";
  const toggle = document.getElementById("overlay-toggle");
  if (toggle) {
    toggle.addEventListener("click", function () {
      const on = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", on ? "true" : "false");
      toggle.textContent = on ? "Hide Grad-CAM overlay" : "Show Grad-CAM overlay";
      document.querySelectorAll("figure.hip img").forEach(function (img) {
        if (!img.dataset.overlay) return;
        img.src = on ? img.dataset.overlay : img.dataset.thumb;
        img.classList.toggle("overlay", on);
      });
    });
  }
  // "Accept as drafted" signs the draft's own text: once the text is edited, only "Save edits and accept" can
  // sign it (the server refuses the other too).
  const text = document.getElementById("report-text");
  const accept = document.getElementById("accept");
  const save = document.getElementById("save-accept");
  if (text && accept && save) {
    const normalise = (value) => value.replace(/\r\n?/g, "\n").split("\n").map((line) => line.trimEnd())
      .join("\n").replace(/^\n+|\n+$/g, "");
    const update = function () {
      const edited = normalise(text.value) !== normalise(text.dataset.original);
      accept.disabled = edited;
      save.disabled = !edited;
    };
    text.addEventListener("input", update);
    update();
  }
})();
