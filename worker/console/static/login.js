// The login form. A link of the form /#token=... (what `riskgate demo` prints) logs in
// at once: the fragment never reaches the server or its logs, and is removed from the
// address bar before anything else happens.
"use strict";
(function () {
  if (new URLSearchParams(location.search).get("login") === "failed") {
    document.getElementById("failed").hidden = false;
  }
  const match = /^#token=(.+)$/.exec(location.hash);
  if (!match) return;
  history.replaceState(null, "", location.pathname);
  document.getElementById("token").value = decodeURIComponent(match[1]);
  document.getElementById("login").submit();
})();
