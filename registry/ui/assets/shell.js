// What every page shares with the shell: the current datacenter's base path, navigation, errors
// shown in the page and short notices.

import { session, token, ApiError } from "./api.js";
import { link, message, replace } from "./dom.js";

export function base() {
  return `/ui/${encodeURIComponent(session.dc)}`;
}

// The shell listens for this and renders the new path.
export function navigate(path, { swap = false } = {}) {
  if (swap) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  window.dispatchEvent(new Event("roster:navigate"));
}

// What a page shows when a read fails: a 403 offers to log in with another token.
export function showError(el, e) {
  if (!(e instanceof ApiError)) {
    replace(el, message("error", String(e)));
  } else if (e.status === 403) {
    const login = link(`${base()}/login?next=${encodeURIComponent(location.pathname)}`, "Log in with a token");
    replace(el, message("error", token() ? "Your token may not read this. " : "The cluster needs a token to show this. ", login, "."));
  } else if (e.status === 0) {
    replace(el, message("error", "The servers cannot be reached; retrying."));
  } else {
    replace(el, message("error", `The servers answered ${e.status}: ${e.message}`));
  }
}

let timer;
export function notify(text) {
  const toast = document.getElementById("toast");
  toast.textContent = text;
  clearTimeout(timer);
  timer = setTimeout(() => { toast.textContent = ""; }, 6000);
}
