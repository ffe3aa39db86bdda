// sigma console: the little the pages need beyond HTML. Loaded from the server itself
// (the Content-Security-Policy allows no inline or third-party script).
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  // "Copy" buttons: data-copy names the id of the field whose value is copied.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      if (!field) { return; }
      field.focus();
      field.select();
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          button.textContent = "Press Ctrl+C";
        });
      } else {
        // Plain-HTTP pages have no clipboard API; the text is selected for Ctrl+C.
        button.textContent = "Press Ctrl+C";
      }
    });
  });
  // Read-only fields select their whole value on focus, ready to copy.
  document.querySelectorAll("input[readonly]").forEach(function (field) {
    field.addEventListener("focus", function () { field.select(); });
  });
  // Filter selects apply at once; the Filter button stays for keyboard users and no-JS.
  document.querySelectorAll("form.filters select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
});
