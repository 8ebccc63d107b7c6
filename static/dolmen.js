// Dolmen's only script besides htmx. Pages work without it; it adds conveniences.
"use strict";
document.addEventListener("submit", function (event) {
  // <form data-confirm="..."> asks before a destructive action.
  var form = event.target;
  var message = form.getAttribute && form.getAttribute("data-confirm");
  if (message && !window.confirm(message)) { event.preventDefault(); event.stopPropagation(); }
}, true);
