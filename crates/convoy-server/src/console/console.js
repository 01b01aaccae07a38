// convoy console: live updates of a deployment's page over server-sent
// events. Everything else is plain HTML forms; the page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var live = document.querySelector("[data-stream]");
  if (!live || !window.EventSource) return;
  var source = new EventSource(live.getAttribute("data-stream"));
  source.addEventListener("live", function (e) {
    // keep open <details> (a target's output) open across updates
    var open = Array.prototype.map.call(live.querySelectorAll("details[open] summary"), function (s) { return s.textContent; });
    live.innerHTML = e.data;
    Array.prototype.forEach.call(live.querySelectorAll("details summary"), function (s) {
      if (open.indexOf(s.textContent) >= 0) s.parentNode.open = true;
    });
    // what may be done changed with the state: swap in the fresh forms,
    // unless someone is filling one in
    var fresh = live.querySelector("template#actions-fresh");
    var actions = document.getElementById("actions");
    if (fresh && actions && fresh.getAttribute("data-sig") !== actions.getAttribute("data-sig")) {
      var editing = Array.prototype.some.call(actions.querySelectorAll("textarea, input[type=text], input:not([type])"), function (f) { return f.value !== ""; });
      if (!editing) {
        actions.innerHTML = fresh.innerHTML;
        actions.setAttribute("data-sig", fresh.getAttribute("data-sig"));
      }
    }
    var badge = live.querySelector(".counts .badge");
    var head = document.getElementById("head-state");
    if (badge && head) head.innerHTML = badge.outerHTML;
    live.setAttribute("data-updated", String(Date.now()));
  });
  source.addEventListener("done", function () {
    source.close();
    live.setAttribute("data-stream-done", "true");
  });
});
