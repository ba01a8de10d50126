// The review page: keyboard and buttons post each decision, and a card says "saved" only once
// the server has committed it. Text from the data is only ever set with textContent.
(() => {
  "use strict";
  const token = document.querySelector('meta[name="review-token"]').content;
  const cards = [...document.querySelectorAll("article.suspect")];
  const reviewer = document.getElementById("reviewer");
  const help = document.getElementById("help");
  let current = -1;

  const remembered = localStorage.getItem("ilt-audit-reviewer");
  if (remembered) reviewer.value = remembered;
  reviewer.addEventListener("change", () => localStorage.setItem("ilt-audit-reviewer", reviewer.value));

  const opacity = document.getElementById("opacity");
  if (opacity) {
    const apply = () => document.documentElement.style.setProperty("--overlay", opacity.value / 100);
    opacity.addEventListener("input", apply);
    apply();
  }

  function focusCard(index) {
    if (!cards.length) return;
    current = Math.max(0, Math.min(cards.length - 1, index));
    cards.forEach((card, i) => card.classList.toggle("current", i === current));
    cards[current].focus({ preventScroll: true });
    cards[current].scrollIntoView({ block: "nearest" });
  }

  async function decide(card, decision, value) {
    const status = card.querySelector(".status");
    status.textContent = "saving…";
    card.classList.remove("error");
    let response, body;
    try {
      response = await fetch("/api/decisions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Review-Token": token },
        body: JSON.stringify({
          id: card.dataset.id, task: card.dataset.task, decision, value, reviewer: reviewer.value,
        }),
      });
      body = await response.json();
    } catch (error) {
      body = { error: "the server did not answer: " + error };
    }
    // "saved" only on the server's 2xx reply, which it sends after the commit; no reply, a
    // refusal or a reply cut short leaves the card "not saved"
    if (!response || !response.ok || !body || body.saved !== true) {
      card.classList.add("error");
      status.textContent = "not saved: " + ((body && body.error) || "no answer from the server");
      return false;
    }
    card.dataset.decision = body.decision;
    card.classList.add("decided");
    const shown = body.decision + (body.value ? " → " + body.value : "");
    status.textContent = "saved: " + shown + " (" + body.reviewer + ")";
    const history = card.querySelector("details.history");
    if (history) {
      const entry = document.createElement("li");
      entry.textContent = body.time + " · " + body.reviewer + ": " + shown;
      history.querySelector("ol").append(entry);
      history.querySelector(".count").textContent = history.querySelectorAll("li").length;
      history.hidden = false;
    }
    const left = document.getElementById("left-" + card.dataset.task);
    if (left && body.counts) left.textContent = body.counts.left + " left of " + body.counts.total;
    return true;
  }

  function relabel(card) {
    const form = card.querySelector("form.relabel");
    if (!form) {  // a mask or a depth map: the model's prediction replaces it
      const button = card.querySelector('button[data-decision="relabel"]');
      if (button && !button.disabled) act(card, "relabel", "prediction");
      return;
    }
    form.hidden = false;
    form.querySelector("select, input").focus();
  }

  function act(card, decision, value) {
    // on to the next at once, so that fast keys never decide one card twice; this card says
    // "saving…", then "saved" once the server has committed it, or why not
    focusCard(cards.indexOf(card) + 1);
    return decide(card, decision, value ?? null);
  }

  cards.forEach((card, index) => {
    card.addEventListener("click", () => { if (current !== index) focusCard(index); });
    card.querySelectorAll("button[data-decision]").forEach((button) => {
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        focusCard(index);
        const decision = button.dataset.decision;
        if (decision === "relabel") relabel(card);
        else act(card, decision);
      });
    });
    const form = card.querySelector("form.relabel");
    if (form) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const fields = [...form.querySelectorAll("[name=value]")];
        let value;
        if (fields.length && fields[0].type === "checkbox") {  // tags: the ticked ones
          value = fields.filter((f) => f.checked).map((f) => f.value);
        } else if (fields.length === 1 && fields[0].tagName === "SELECT") {
          value = fields[0].value;
        } else {
          value = fields.map((f) => Number(f.value));
        }
        form.hidden = true;
        act(card, "relabel", value);
      });
      form.querySelector(".cancel").addEventListener("click", () => { form.hidden = true; card.focus(); });
      form.addEventListener("keydown", (event) => {
        if (event.key === "Escape") { event.preventDefault(); form.hidden = true; card.focus(); }
        // a list or a check box does not submit its form on Enter by itself
        if (event.key === "Enter" && (event.target.tagName === "SELECT" || event.target.type === "checkbox")) {
          event.preventDefault();
          form.requestSubmit();
        }
      });
    }
  });

  document.getElementById("help-button").addEventListener("click", () => help.showModal());

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    // typing in a field is typing; a slider or a check box keeps the shortcuts working
    const typing = target.tagName === "INPUT" && !["range", "checkbox"].includes(target.type);
    if (typing || (target.closest && target.closest("select, textarea, form.relabel, dialog"))) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const card = cards[current];
    switch (event.key) {
      case "j": case "ArrowDown": focusCard(current + 1); break;
      case "p": case "ArrowUp": focusCard(current - 1); break;
      case "?": help.open ? help.close() : help.showModal(); break;
      case "k": if (card) act(card, "keep"); break;
      case "d": if (card) act(card, "drop"); break;
      case "r": if (card) relabel(card); break;
      default: return;
    }
    event.preventDefault();
  });

  focusCard(0);
})();
