// The page's dialogs: native <dialog> opened modal, so the rest of the page is inert
// (focus stays inside) and Escape closes it; focus returns to what opened it.

import {h} from "./format.js";

function open(dialog, focus) {
  const opener = document.activeElement;
  dialog.addEventListener("close", () => {
    if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
  }, {once: true});
  dialog.showModal();
  (focus || dialog.querySelector("input, select, button")).focus();
}

function field(spec) {
  const id = `field-${spec.name}`;
  if (spec.type === "checkboxes") {
    return h("fieldset", {},
      h("legend", {}, spec.label),
      spec.options.map((option) => h("label", {},
        h("input", {type: "checkbox", name: spec.name, value: option,
                    checked: (spec.value || []).includes(option)}), ` ${option}`)),
      spec.hint ? h("p", {class: "hint"}, spec.hint) : null);
  }
  if (spec.type === "select") {
    return [h("label", {for: id}, spec.label),
      h("select", {id, name: spec.name}, spec.options.map((option) => h("option", {
        value: option, selected: option === spec.value}, option)))];
  }
  return [h("label", {for: id}, spec.label),
    h("input", {id, name: spec.name, type: "text", value: spec.value ?? "",
                required: spec.required, autocomplete: "off", spellcheck: "false",
                "aria-describedby": spec.hint ? `${id}-hint` : null}),
    spec.hint ? h("p", {class: "hint", id: `${id}-hint`}, spec.hint) : null];
}

function values(form, fields) {
  const out = {};
  for (const spec of fields) {
    if (spec.type === "checkboxes") {
      out[spec.name] = [...form.querySelectorAll(`input[name="${spec.name}"]:checked`)]
        .map((box) => box.value);
    } else {
      out[spec.name] = form.elements[spec.name].value.trim();
    }
  }
  return out;
}

/**
 * Ask before acting: `title`, `text`, the `ok` button's label, optional `fields`; on OK
 * `action(values)` runs, and an error it throws is shown in the dialog, which stays open.
 * Resolves to the action's result, or null when cancelled.
 */
export function confirmAction({title, text, ok, danger = false, fields = [], action}) {
  const dialog = document.getElementById("confirm");
  const form = document.getElementById("confirm-form");
  const okButton = document.getElementById("confirm-ok");
  const error = document.getElementById("confirm-error");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-fields").replaceChildren(...fields.flatMap(field));
  okButton.textContent = ok;
  okButton.className = danger ? "danger" : "primary";
  okButton.disabled = false;
  error.textContent = "";
  return new Promise((resolve) => {
    let result = null;
    const submit = async (event) => {
      event.preventDefault();
      okButton.disabled = true;
      error.textContent = "";
      try {
        result = await action(values(form, fields));
        dialog.close("ok");
      } catch (failure) {
        error.textContent = failure.message || String(failure);
        okButton.disabled = false;
      }
    };
    const cancel = () => dialog.close("cancel");
    form.addEventListener("submit", submit);
    document.getElementById("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", () => {
      form.removeEventListener("submit", submit);
      document.getElementById("confirm-cancel").removeEventListener("click", cancel);
      resolve(result);
    }, {once: true});
    // With fields, start in the first one; a bare question starts on Cancel, the safe key.
    open(dialog, fields.length ? null : document.getElementById("confirm-cancel"));
  });
}

/** Ask for the endpoint's token until `check(token)` accepts it. */
export function askToken(check) {
  const dialog = document.getElementById("token");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  return new Promise((resolve) => {
    const submit = async (event) => {
      event.preventDefault();
      error.textContent = "";
      if (await check(input.value.trim())) {
        form.removeEventListener("submit", submit);
        dialog.close();
        resolve();
      } else {
        error.textContent = "The endpoint does not take this token.";
        input.select();
      }
    };
    form.addEventListener("submit", submit);
    // Without the token the page shows nothing: Escape leaves the question open.
    dialog.addEventListener("cancel", (event) => event.preventDefault());
    open(dialog, input);
  });
}

/** Show `content` (nodes) in the detail dialog under `title`. */
export function showDetail(title, content) {
  const dialog = document.getElementById("detail");
  document.getElementById("detail-title").textContent = title;
  document.getElementById("detail-body").replaceChildren(...content);
  if (!dialog.open) open(dialog, document.getElementById("detail-close"));
}

export function setupDetail() {
  const dialog = document.getElementById("detail");
  document.getElementById("detail-close").addEventListener("click", () => dialog.close());
}
