"use strict";
// The credits page: sign-in (local stand-in or host-supplied token), balance, packages, checkout
// return, paid actions, settings, auto top-up (the card on file, its settings and state), usage (a
// chart, drawn by Chart.js) and history (also as a CSV file).
// Talks to the API only through its public routes; on the local stack it also shows the user's events
// from the local event bus (/local/notifications) and, with the Stripe emulator, test tools that act on
// the user's payments (/local/stripe/payments).
(() => {
  const cfg = Object.assign({ apiBase: "", auth: "local", actionLabels: {}, actionPath: null, lowBalance: 10 },
    window.CREDITS_CONFIG);
  // The paid actions, [{ id, label, cost }], cheapest first: the server's one price list (GET /credit-prices,
  // loadPrices), never a copy in the page's configuration.
  cfg.actions = [];
  const apiBase = String(cfg.apiBase || "").replace(/\/+$/, "");
  const ZERO_DECIMAL = new Set("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split(" "));
  const [TOKEN_KEY, USER_KEY, BEFORE_KEY] = ["credits.token", "credits.user", "credits.balanceBeforeCheckout"];
  const OUTCOMES_KEY = "credits.checkoutOutcomes"; // what became of each checkout this tab returned from
  const CARD_KEY = "credits.addingCard"; // the card checkout (setup mode) this tab left for: { sessionId, card }
  const POLL_SECONDS = 30;
  const [NOTES_EVERY_MS, NOTES_MAX, NOTE_NEW_MS] = [3000, 20, 10000];
  const $ = (selector) => document.querySelector(selector);
  const state = {
    balance: null, available: null, cursor: null, ids: new Set(), inflight: new Map(), retryKeys: new Map(),
    packages: [], settings: null, settingsDirty: false, notes: new Set(), notesLoaded: false, notesTimer: null,
    notesBusy: false, rows: new Map(), purchases: new Map(), payments: [], tools: false, toolsMissing: false,
    toolsBusy: false, checkoutSession: null, limitRefused: false, expiryTimer: null,
    chart: null, usageShown: "", usageSeq: 0, usageDrawn: 0, usageTotals: null, usageWatch: null,
    topUpDirty: false, topUpWatch: null, topUpTimer: null, nextTopUpMissing: false,
  };
  let packagesReady = Promise.resolve();
  let localConfig = Promise.resolve(null);

  class ApiError extends Error {
    constructor(status, data) {
      const error = (data && data.error) || {};
      super(error.message || (data && data.message) || `Request failed (${status}).`);
      this.status = status;
      this.code = error.code || (status === 401 ? "unauthorized" : `http_${status}`);
      this.details = error;
    }
  }

  // ---- helpers -------------------------------------------------------------------------------
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const NUMBER = new Intl.NumberFormat();
  const num = (n) => NUMBER.format(n); // credits are always shown with the reader's thousands separators
  const credits = (n) => `${num(n)} ${Math.abs(n) === 1 ? "credit" : "credits"}`;
  const actionLabel = (id) => (cfg.actions.find((a) => a.id === id) || {}).label;

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined && c !== ""));
    return node;
  }

  function money(minor, currency) {
    const code = String(currency || "").toLowerCase();
    const value = ZERO_DECIMAL.has(code) ? minor : minor / 100;
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: code.toUpperCase() }).format(value);
    } catch {
      return `${value} ${code.toUpperCase()}`;
    }
  }

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function say(text, kind = "info") {
    const box = $("#message");
    box.dataset.kind = kind;
    box.textContent = text;
  }

  function showCheckout(text, kind, withRefresh = false) {
    $("#checkout-box").hidden = !text;
    $("#checkout-box").dataset.kind = kind === "pending" ? "info" : kind || "info";
    $("#checkout-status").dataset.state = kind || "";
    $("#checkout-status").hidden = !text;
    $("#checkout-status").textContent = text || "";
    $("#checkout-refresh").hidden = !withRefresh;
  }

  function report(err) {
    if (err.status === 401) return; // handled by signedOut()
    if (err.status === 503) say("The service is busy and nothing was charged. Please try again in a moment.", "error");
    else say(err.message, "error");
  }

  // ---- API and session ---------------------------------------------------------------------
  async function getToken() {
    if (cfg.auth === "token") return typeof cfg.getToken === "function" ? cfg.getToken() : null;
    return localStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body, extraHeaders = {}) {
    return (await request(method, path, body, extraHeaders)).data;
  }

  async function request(method, path, body, extraHeaders = {}) {
    const res = await send(method, path, body, extraHeaders);
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new ApiError(res.status, data);
    return { data, headers: res.headers };
  }

  // The fetch itself, with the user's token: the answer as it came (a 401 signs out), for JSON or a file.
  async function send(method, path, body, extraHeaders = {}) {
    // The local sign-in needs no token; every other route, /local/notifications and /local/stripe/ included, does.
    const anonymous = path === "/local/sign-in";
    const token = anonymous ? null : await getToken();
    const headers = Object.assign({ Accept: "application/json" }, extraHeaders);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(apiBase + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, { error: { code: "network", message: "Network problem: check your connection and try again." } });
    }
    if (res.status === 401 && !anonymous) signedOut("Your session has expired. Please sign in again.");
    return res;
  }

  function userFromToken(token) {
    try { return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub || null; } catch { return null; }
  }

  function showSignedIn(yes) {
    ["#account", "#wallet", "#settings-card", "#autotopup-card", "#usage-card", "#history-card", "#save-card-option"]
      .forEach((id) => ($(id).hidden = !yes));
    $("#notifications-card").hidden = !yes || cfg.auth !== "local"; // the local event bus only
    showTools(); // the local Stripe emulator only
  }

  function signedIn(user) {
    $("#signin").hidden = true;
    showSignedIn(true);
    startNotifications();
    $("#signed-in-as").textContent = user ? `Signed in as ${user}` : "Signed in";
    $("#signout-button").hidden = cfg.auth === "token" && typeof cfg.signOut !== "function";
  }

  function signedOut(reason) {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(USER_KEY);
    Object.assign(state, { balance: null, available: null, cursor: null, settings: null, settingsDirty: false,
      payments: [], checkoutSession: null, limitRefused: false, topUpDirty: false, topUpWatch: null });
    showLots(null);
    clearUsage();
    state.ids.clear();
    state.rows.clear();
    state.purchases.clear();
    $("#payments").replaceChildren();
    toolsSay("");
    stopNotifications();
    clearSettingsForm();
    $("#history tbody").replaceChildren();
    $("#balance").textContent = "";
    showSignedIn(false);
    updateActions();
    showCheckout("");
    $("#signin").hidden = cfg.auth !== "local";
    if (reason) say(cfg.auth === "local" ? reason : "Your session has expired. Please reload the page.", "error");
  }

  const isSignedIn = () => !$("#account").hidden;

  // ---- balance and history ------------------------------------------------------------------
  function setBalance(balance, available = balance) {
    state.balance = balance;
    state.available = available;
    $("#balance").textContent = num(balance);
    $(".balance .unit").textContent = Math.abs(balance) === 1 ? "credit" : "credits";
    showBalanceNotice();
    updateActions();
  }

  // Under the balance: nothing yet (with the way to buy), owed after a clawback, or under the threshold.
  function showBalanceNotice() {
    const balance = state.balance;
    // The user's own threshold once settings are loaded (0 turns the notice off), else the page's default.
    const threshold = Number(state.settings ? state.settings.lowBalanceThreshold : cfg.lowBalance);
    const low = $("#low-balance");
    let text = "";
    if (balance === null) text = "";
    else if (balance < 0) text = `Your balance is ${num(balance)}: buy credits to pay it back.`;
    else if (balance === 0) {
      text = state.ids.size ? "You have no credits left: buy credits to use paid actions."
        : "You have no credits yet: buy credits to use paid actions.";
    } else if (threshold > 0 && balance < threshold) {
      text = `Your balance is low (under ${credits(threshold)}): buy credits to keep using paid actions.`;
    }
    low.hidden = !text;
    low.dataset.kind = balance !== null && balance < 0 ? "error" : balance === 0 ? "info" : "warn";
    if (!text || balance > 0) return (low.textContent = text);
    const buy = el("button", { type: "button", class: "ghost small notice-buy" }, "Buy credits");
    buy.addEventListener("click", () => {
      $("#packages-title").scrollIntoView({ behavior: "smooth", block: "start" });
      const first = $("#packages button.buy");
      if (first) first.focus({ preventScroll: true });
    });
    low.replaceChildren(el("span", {}, text), buy);
  }

  function setHeld(held, available) {
    const line = $("#held");
    line.hidden = !held;
    line.textContent = held ? `${credits(held)} held for a running action · ${num(available)} available` : "";
  }

  async function loadBalance() {
    const body = await api("GET", "/credits/balance");
    const { balance, available, held } = body;
    setBalance(balance, available);
    setHeld(held, available);
    showLots(body);
    return balance;
  }

  // Credit lots: promotional credits apart from paid ones ("(20 promotional)" by the balance), and
  // the soonest expiry ("40 credits expire on 3 Jan 2027"). When it passes, the balance is read again:
  // expired credits stop counting at once, without anything written.
  const EXPIRY_DATE = { day: "numeric", month: "short", year: "numeric" };
  const [EXPIRY_RECHECK_MS, EXPIRY_LONGEST_WAIT_MS] = [5000, 86_400_000];

  function expiryText({ amount, expiresAt }) {
    const at = new Date(expiresAt);
    const soon = at - Date.now() < 2 * EXPIRY_LONGEST_WAIT_MS; // within two days: the time matters too
    const time = soon ? ` at ${at.toLocaleTimeString(undefined, { timeStyle: "short" })}` : "";
    return `${credits(amount)} ${amount === 1 ? "expires" : "expire"} on ${at.toLocaleDateString(undefined, EXPIRY_DATE)}${time}`;
  }

  function showLots(body) {
    clearTimeout(state.expiryTimer);
    state.expiryTimer = null;
    const promotional = body && body.byCategory ? Number(body.byCategory.promotional) || 0 : 0;
    $("#promotional").hidden = !promotional;
    $("#promotional").textContent = promotional ? `(${num(promotional)} promotional)` : "";
    const next = body && Array.isArray(body.expiring) ? body.expiring[0] : null;
    $("#expiring").hidden = !next;
    $("#expiring").textContent = next ? expiryText(next) : "";
    if (!next) return;
    // A second after it expires (a clock behind the server's: again every few seconds, until it is gone);
    // a far expiry is looked at again once a day, so a timer never overflows.
    const wait = Math.min(Math.max(Date.parse(next.expiresAt) - Date.now() + 1000, EXPIRY_RECHECK_MS),
      EXPIRY_LONGEST_WAIT_MS);
    state.expiryTimer = setTimeout(() => {
      state.expiryTimer = null;
      if (isSignedIn()) loadBalance().catch(() => {});
    }, wait);
  }

  const DATE_FORMAT = { dateStyle: "medium", timeStyle: "short" };
  const TYPE_LABELS = { purchase: "Purchase", usage: "Usage", refund: "Refund", dispute: "Dispute",
    expiration: "Expiration", adjustment: "Adjustment", gift: "Gift" };

  // The payment a purchase, refund or dispute entry belongs to: the system writes `purchase:<payment>`
  // and `settle:<payment>:<step>` (`refund:<payment>:…` in an older layout) as its references.
  function paymentOf(t) {
    const match = /^(?:purchase|settle|refund):([^:]+)/.exec(String(t.referenceId || ""));
    return match ? match[1] : null;
  }

  // An auto top-up's purchase: the server describes it as "Auto top-up: Starter, 100 credits".
  const AUTO_TOP_UP = /^Auto top-up: (.+), [\d,]+ credits?$/;
  const isAutoTopUp = (t) => t.type === "purchase" && /^Auto top-up:/.test(String(t.description || ""));

  // The package a purchase bought: the name it was sold under ("Starter: 100 credits", or an auto
  // top-up's "Auto top-up: Starter, 100 credits"), else the package on sale with its credits and price.
  function purchaseName(t) {
    const topUp = AUTO_TOP_UP.exec(t.description || "");
    if (topUp) return topUp[1];
    const sold = /^(.+): \d+ credits?$/.exec(t.description || "");
    if (sold) return sold[1];
    const currency = String(t.currency || "").toLowerCase();
    const pkg = state.packages.find((p) => p.credits === t.amount && p.price === t.monetaryAmount
      && String(p.currency).toLowerCase() === currency);
    return pkg ? pkg.name : null;
  }

  // What an entry was, in words a person reads: the stored description is the server's (ids, minor
  // units, action ids); the page words it from the entry's type, reference, money and the packages.
  function describe(t) {
    const paid = t.monetaryAmount != null && t.currency ? money(t.monetaryAmount, t.currency) : null;
    const payment = paymentOf(t);
    const bought = payment && state.purchases.get(payment);
    const of = bought || "an earlier purchase";
    switch (t.type) {
      case "purchase": {
        const name = purchaseName(t) || "Credits";
        if (isAutoTopUp(t)) return `Auto top-up: ${name}, ${credits(t.amount)}${paid ? ` for ${paid}` : ""}`;
        return `${name}: ${credits(t.amount)}${paid ? ` for ${paid}` : ""}`;
      }
      case "usage":
        return actionLabel(t.description) || t.description || "Usage";
      case "expiration": // the server's own words: "Expired: 70 credits of Starter (bought 3 Jan 2026)"
        return t.description || `Expired: ${credits(-t.amount)}`;
      case "refund":
        return paid && t.monetaryAmount > 0 ? `Refund: ${paid} of ${of}` : `Refund of ${of}`;
      case "dispute": {
        const text = String(t.description || "");
        if (/\blost\b/.test(text)) return `Dispute lost: ${of}`;
        if (t.amount < 0) return `Dispute opened: ${paid ? `${paid} of ` : ""}${of}`;
        return `${/\bwon\b/.test(text) ? "Dispute won" : "Dispute closed"}: ${of}, credits restored`;
      }
      default:
        return t.description || TYPE_LABELS[t.type] || t.type;
    }
  }

  // A dispute closed in the user's favour gives credits back: shown as a credit, not as a loss.
  const restored = (t) => (t.type === "dispute" || t.type === "refund") && t.amount > 0;

  function historyRow(t) {
    const payment = paymentOf(t);
    const row = el("tr", { "data-type": t.type, "data-id": t.id },
      el("td", { class: "type" }, el("span", { class: `badge badge-${t.type}${restored(t) ? " badge-restored" : ""}` },
        TYPE_LABELS[t.type] || t.type)),
      el("td", { class: `num amount ${t.amount < 0 ? "debit" : "credit"}` }, `${t.amount > 0 ? "+" : ""}${num(t.amount)}`),
      el("td", { class: "num after" }, num(t.balanceAfter)),
      el("td", { class: "date" }, el("time", { dateTime: t.createdAt }, new Date(t.createdAt).toLocaleString(undefined, DATE_FORMAT))),
      el("td", { class: "desc" }, describe(t)));
    // A refund or dispute listed before its purchase is loaded is worded again once the purchase is known.
    if (payment && t.type !== "purchase" && !state.purchases.has(payment)) row.dataset.payment = payment;
    return row;
  }

  function learnPurchases(named) {
    // named: [payment id, package name] pairs; rows waiting for one of them are worded again.
    let learned = false;
    for (const [payment, name] of named) {
      if (!payment || !name || state.purchases.has(payment)) continue;
      state.purchases.set(payment, name);
      learned = true;
    }
    if (!learned) return;
    for (const row of document.querySelectorAll("#history tr[data-payment]")) {
      if (!state.purchases.has(row.dataset.payment)) continue;
      row.querySelector(".desc").textContent = describe(state.rows.get(row.dataset.id));
      delete row.dataset.payment;
    }
  }

  function addRows(transactions, atTop) {
    const body = $("#history tbody");
    const fresh = transactions.filter((t) => !state.ids.has(t.id));
    fresh.forEach((t) => { state.ids.add(t.id); state.rows.set(t.id, t); });
    learnPurchases(fresh.filter((t) => t.type === "purchase").map((t) => [paymentOf(t), purchaseName(t)]));
    const rows = fresh.map(historyRow);
    if (atTop) body.prepend(...rows);
    else body.append(...rows);
    $("#history-empty").hidden = body.rows.length > 0;
    $(".table-wrap").hidden = body.rows.length === 0;
    hideConfirmedAfterClawback();
    if (state.balance !== null) showBalanceNotice(); // "no credits yet" or "left" follows the history
  }

  // "Payment confirmed" is no longer true once a refund or dispute took credits back after the purchase.
  function hideConfirmedAfterClawback() {
    if ($("#checkout-box").hidden || $("#checkout-status").dataset.state !== "success") return;
    const entries = [...state.rows.values()];
    const bought = entries.filter((t) => t.type === "purchase").map((t) => Date.parse(t.createdAt));
    if (!bought.length) return;
    const last = Math.max(...bought);
    if (entries.some((t) => (t.type === "refund" || t.type === "dispute") && t.amount < 0
      && Date.parse(t.createdAt) > last)) showCheckout("");
  }

  async function loadHistory(older = false) {
    const query = new URLSearchParams({ limit: "10" });
    if (older && state.cursor) query.set("cursor", state.cursor);
    const page = await api("GET", `/credits/transactions?${query}`);
    if (!older) {
      state.ids.clear();
      state.rows.clear();
      $("#history tbody").replaceChildren();
    }
    addRows(page.transactions, false);
    state.cursor = page.nextCursor;
    $("#history-more").hidden = !page.nextCursor;
  }

  const refresh = () => Promise.all([loadBalance(), loadHistory(), loadSettings(), loadPayments(), loadUsage()])
    .catch(report);

  // ---- usage chart and the history as CSV ---------------------------------------------------
  // The last 30 days' credits spent per day, stacked by action (GET /credits/usage, drawn by Chart.js),
  // and under it this UTC month's spending by action (the same route, granularity=month, from the 1st).
  // The route is kept from the ledger's stream, a moment after a charge: after one, the page asks again
  // every USAGE_POLL_MS until the figures include it, and redraws; after USAGE_FAST_MS (a slow stream,
  // a loaded machine) every USAGE_SLOW_POLL_MS, and it gives up USAGE_WATCH_MS after the last charge.
  const [USAGE_POLL_MS, USAGE_FAST_MS, USAGE_SLOW_POLL_MS, USAGE_WATCH_MS] = [500, 10_000, 2000, 30_000];
  const USAGE_COLORS = ["#4f46e5", "#0d9488", "#e8a23a", "#db2777", "#0284c7", "#65a30d", "#7c3aed", "#dc2626"];
  const OTHER_COLOR = "#9aa1ae";
  const USAGE_TICK_PX = 72; // the room a day's name ("28 Nov") takes under the chart
  const DAY_LABEL = { day: "numeric", month: "short", timeZone: "UTC" };
  const dayLabel = (period) => new Date(`${period}T00:00:00Z`).toLocaleDateString(undefined, DAY_LABEL);
  const usageLabel = (id) => actionLabel(id) || labelOf(id);

  // The actions a usage answer spent on: the price list's order (cheapest first), then any other (`other`).
  function usageActions(series) {
    const spent = new Set(series.flatMap((day) => Object.keys(day.byAction || {}).filter((id) => day.byAction[id])));
    const known = cfg.actions.map((a) => a.id).filter((id) => spent.has(id));
    return [...known, ...[...spent].filter((id) => !known.includes(id)).sort()];
  }

  function usageColor(id) {
    const i = cfg.actions.findIndex((a) => a.id === id);
    return i < 0 ? OTHER_COLOR : USAGE_COLORS[i % USAGE_COLORS.length];
  }

  function chartOptions() {
    const still = window.matchMedia && matchMedia("(prefers-reduced-motion: reduce)").matches;
    return {
      responsive: true, maintainAspectRatio: false, animation: still ? false : { duration: 300 },
      interaction: { mode: "index", intersect: false },
      scales: {
        // A day's name every few days, counted back from today's (the last bar), as many as the width fits.
        x: { stacked: true, grid: { display: false }, ticks: { maxRotation: 0, autoSkip: false,
          callback(value, index, ticks) {
            const step = Math.ceil(ticks.length / Math.max(2, Math.floor(this.chart.width / USAGE_TICK_PX)));
            return (ticks.length - 1 - index) % step === 0 ? dayLabel(this.getLabelForValue(value)) : "";
          } } },
        y: { stacked: true, beginAtZero: true, ticks: { precision: 0, callback: (value) => num(value) },
          grid: { color: "#eef0f4" } },
      },
      plugins: {
        legend: { position: "bottom",
          labels: { boxWidth: 12, boxHeight: 12, usePointStyle: true, pointStyle: "rectRounded" } },
        tooltip: { callbacks: {
          title: (items) => (items.length ? dayLabel(items[0].label) : ""),
          label: (item) => `${item.dataset.label}: ${credits(item.parsed.y)}`,
          footer: (items) => `Total: ${credits(items.reduce((sum, item) => sum + item.parsed.y, 0))}`,
        } },
      },
    };
  }

  // The chart: its labels are the days as the API names them (YYYY-MM-DD), shown as "6 Dec".
  function drawUsage(usage) {
    const series = usage.series || [];
    const actions = usageActions(series);
    const { spent, byAction } = usage.totals;
    const parts = actions.map((id) => `${usageLabel(id)} ${num(byAction[id] || 0)}`);
    const drawable = typeof window.Chart === "function"; // else vendor/chart.umd.js is not where the page is
    $("#usage-unavailable").hidden = drawable;
    $("#usage-empty").hidden = !drawable || spent > 0;
    $("#usage-chart").setAttribute("aria-label", "Credits spent per day over the last 30 days, by action: "
      + `${credits(spent)} in all${parts.length ? ` (${parts.join(", ")})` : ""}.`);
    if (!drawable) return;
    const data = {
      labels: series.map((day) => day.period),
      datasets: actions.map((id) => ({
        label: usageLabel(id), action: id, data: series.map((day) => (day.byAction || {})[id] || 0),
        backgroundColor: usageColor(id), borderRadius: 3, maxBarThickness: 28,
      })),
    };
    if (!state.chart) {
      Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      Chart.defaults.color = "#626a7a";
      state.chart = new Chart($("#usage-chart"), { type: "bar", data, options: chartOptions() });
    } else {
      state.chart.data = data;
      state.chart.update();
    }
  }

  // "This month: 1,240 credits: Generate 800, Analyze 390, Search 50", most spent first.
  function showMonth(month) {
    const { spent, byAction } = month.totals;
    const parts = Object.entries(byAction || {}).filter(([, n]) => n > 0)
      .sort(([a, x], [b, y]) => y - x || usageLabel(a).localeCompare(usageLabel(b)))
      .map(([id, n]) => `${usageLabel(id)} ${num(n)}`);
    $("#usage-month").textContent = spent > 0 ? `This month: ${credits(spent)}: ${parts.join(", ")}`
      : "Nothing spent this month yet: your paid actions show up here.";
    $("#usage-month").classList.toggle("muted", !(spent > 0));
  }

  const isoDay = (date) => date.toISOString().slice(0, 10);

  // Both answers (the 30 days by day, this month); drawn unless a later request was drawn already, or
  // the user changed meanwhile. Resolves to what is shown: { days, month } totals.
  async function loadUsage() {
    const seq = ++state.usageSeq;
    const token = await getToken();
    const today = new Date();
    const first = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1));
    const month = new URLSearchParams({ from: isoDay(first), to: isoDay(today), granularity: "month" });
    const [days, thisMonth] = await Promise.all([api("GET", "/credits/usage"), api("GET", `/credits/usage?${month}`)]);
    if (seq < state.usageDrawn || token !== (await getToken()) || !isSignedIn()) return state.usageTotals;
    state.usageDrawn = seq;
    state.usageTotals = { days: days.totals.spent, month: thisMonth.totals.spent };
    const shown = JSON.stringify([days, thisMonth]);
    if (shown !== state.usageShown) { // unchanged: nothing to redraw
      state.usageShown = shown;
      drawUsage(days);
      showMonth(thisMonth);
    }
    return state.usageTotals;
  }

  // After a charge: ask again until both figures include it (more charges meanwhile add theirs), never
  // holding up the page; a charge the stream is slow to deliver shows at the next refresh.
  function watchUsage(charged) {
    if (!(charged > 0)) return;
    const base = state.usageTotals || { days: 0, month: 0 };
    const watch = state.usageWatch;
    state.usageWatch = {
      days: (watch ? watch.days : base.days) + charged,
      month: (watch ? watch.month : base.month) + charged,
      since: Date.now(),
    };
    if (!watch) pollUsage();
  }

  async function pollUsage() {
    const waited = () => Date.now() - state.usageWatch.since;
    while (state.usageWatch && waited() < USAGE_WATCH_MS && isSignedIn()) {
      await sleep(waited() < USAGE_FAST_MS ? USAGE_POLL_MS : USAGE_SLOW_POLL_MS);
      if (!state.usageWatch) break; // signed out meanwhile
      const shown = await loadUsage().catch(() => null); // a missed poll is made up by the next one
      const want = state.usageWatch;
      if (shown && want && shown.days >= want.days && shown.month >= want.month) break;
    }
    state.usageWatch = null;
  }

  function clearUsage() {
    if (state.chart) state.chart.destroy();
    // A request still on its way is not drawn: usageDrawn is past it.
    Object.assign(state, { chart: null, usageShown: "", usageDrawn: ++state.usageSeq, usageTotals: null,
      usageWatch: null });
    $("#usage-month").textContent = "";
    $("#usage-empty").hidden = true;
  }

  // The file's name from Content-Disposition (`filename*=UTF-8''…` or `filename="…"`), else a default.
  function fileName(disposition) {
    const text = String(disposition || "");
    const plain = /filename\s*=\s*(?:"([^"]*)"|([^;\s]+))/i.exec(text);
    const encoded = /filename\*\s*=\s*UTF-8''([^;\s]+)/i.exec(text);
    let name = plain ? plain[1] ?? plain[2] : "";
    try {
      if (encoded) name = decodeURIComponent(encoded[1]);
    } catch {
      // not percent-encoded after all: the plain name, if any
    }
    name = name.replace(/[\\/\u0000-\u001f]/g, "").trim();
    return name || "credits-history.csv";
  }

  // The whole history as CSV: fetched with the token (a link cannot send it), then saved as a file.
  async function downloadCsv(event) {
    const button = event.currentTarget;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const res = await send("GET", "/credits/transactions", undefined, { Accept: "text/csv" });
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: fileName(res.headers.get("Content-Disposition")), hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000); // the browser has long since read it
    } catch (err) {
      report(err);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // ---- settings -----------------------------------------------------------------------------
  const SETTINGS_FIELDS = { lowBalanceThreshold: "#low-balance-threshold", monthlySpendLimit: "#monthly-spend-limit" };

  function settingsLoading(loading) {
    $("#settings-form").setAttribute("aria-busy", String(loading));
    $("#settings-loading").hidden = !loading;
    Object.values(SETTINGS_FIELDS).forEach((id) => ($(id).disabled = loading));
    $("#settings-save").disabled = loading;
  }

  // "credits" after a settings field, "credit" after 1.
  function settingsUnits() {
    Object.values(SETTINGS_FIELDS).forEach((id) => {
      $(`${id} + .unit`).textContent = Math.abs(Number($(id).value)) === 1 ? "credit" : "credits";
    });
  }

  function showSettings(settings, keepInputs = false) {
    const before = state.settings;
    state.settings = settings;
    if ($("#settings-form").getAttribute("aria-busy") === "true") settingsLoading(false);
    if (!keepInputs) {
      $("#low-balance-threshold").value = String(settings.lowBalanceThreshold);
      $("#monthly-spend-limit").value = settings.monthlySpendLimit == null ? "" : String(settings.monthlySpendLimit);
      state.settingsDirty = false;
      settingsUnits();
    }
    const spent = settings.spentThisMonth;
    $("#spent-this-month").textContent = settings.monthlySpendLimit == null
      ? `Spent this month: ${credits(spent)} (no limit).`
      : `Spent this month: ${num(spent)} of ${credits(settings.monthlySpendLimit)}.`;
    if (state.balance !== null) setBalance(state.balance); // the low-balance notice follows the threshold
    showTopUp(settings, state.topUpDirty);
    followTopUp(before, settings);
  }

  async function loadSettings() {
    // What the user is typing is kept; the month's spending is always brought up to date.
    showSettings(await api("GET", "/credits/settings"), state.settingsDirty);
  }

  function settingsStatus(text, kind = "info") {
    const status = $("#settings-status");
    status.textContent = text;
    status.dataset.kind = kind;
    status.hidden = !text;
  }

  function fieldError(input, text) {
    const box = $(`#${input.id}-error`);
    box.textContent = text;
    box.hidden = !text;
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function clearSettingsForm() {
    Object.values(SETTINGS_FIELDS).forEach((id) => { $(id).value = ""; fieldError($(id), ""); });
    $("#spent-this-month").textContent = "";
    settingsStatus("");
    settingsUnits();
    settingsLoading(true); // until the signed-in user's settings arrive
    clearTopUp();
  }

  // What each field accepts, in plain words: the API's validation wording (pydantic's) never reaches people.
  const SETTINGS_RULES = {
    lowBalanceThreshold: "Enter a whole number of credits from 0 to 1,000,000,000 (0 turns the alert off).",
    monthlySpendLimit: "Enter a whole number of credits from 1 to 1,000,000,000, or leave it empty for no limit.",
  };

  async function saveSettings(event) {
    event.preventDefault();
    const inputs = Object.entries(SETTINGS_FIELDS).map(([field, id]) => [field, $(id)]);
    inputs.forEach(([, input]) => fieldError(input, ""));
    const threshold = $(SETTINGS_FIELDS.lowBalanceThreshold);
    const unreadable = inputs.find(([, input]) => input.validity.badInput)?.[1]
      || (threshold.value.trim() === "" ? threshold : null);
    if (unreadable) {
      fieldError(unreadable, unreadable === threshold && !threshold.validity.badInput
        ? "Enter a number of credits (0 turns the alert off)." : "Enter a whole number of credits.");
      unreadable.focus();
      return settingsStatus("Not saved: check the highlighted field.", "error");
    }
    // An empty limit means no limit (null); numbers are sent as typed and the API checks them.
    const body = Object.fromEntries(inputs.map(([field, input]) =>
      [field, input.value.trim() === "" ? null : Number(input.value)]));
    const button = $("#settings-save");
    button.disabled = true;
    settingsStatus("Saving…");
    try {
      showSettings(await api("PUT", "/credits/settings", body));
      settingsStatus("Settings saved.", "success");
    } catch (err) {
      if (err.status !== 400) return settingsStatus(`Not saved: ${err.message}`, "error");
      let first = null;
      for (const issue of err.details.errors || []) {
        const id = SETTINGS_FIELDS[issue.field];
        if (!id) continue; // not a field of the form: the sentence below says what to do
        fieldError($(id), SETTINGS_RULES[issue.field]);
        first = first || $(id);
      }
      if (first) first.focus();
      settingsStatus(first ? "Not saved: check the highlighted field."
        : "Not saved: the settings could not be read. Reload the page and try again.", "error");
    } finally {
      button.disabled = false;
    }
  }

  // ---- auto top-up --------------------------------------------------------------------------
  // The card on file (GET /credits/settings `card`; "Add a card" is a Checkout Session in setup mode,
  // POST /credits/cards), the settings (PUT /credits/settings {"autoTopUp"}) and what auto top-up is
  // doing now (`autoTopUp` and `topUp`). A top-up lands on its own, a moment after the spending that
  // started it: while one is pending the page reads the settings again every TOPUP_POLL_MS (after
  // TOPUP_FAST_MS every TOPUP_SLOW_POLL_MS, giving up after TOPUP_WATCH_MS), and once it ended, the
  // balance and the history.
  const [TOPUP_POLL_MS, TOPUP_FAST_MS, TOPUP_SLOW_POLL_MS, TOPUP_WATCH_MS] = [1000, 15_000, 3000, 120_000];
  const DEFAULT_MAX_PER_MONTH = 5;
  const SAVE_CARD_KEY = "credits.savingCard"; // a purchase that saves its card: the card shown before it
  const TOPUP_FIELDS = { threshold: "#autotopup-threshold", packageId: "#autotopup-package", maxPerMonth: "#autotopup-max" };
  const TOPUP_RULES = {
    threshold: "Enter a whole number of credits from 0 to 1,000,000,000.",
    packageId: "Choose a package that is on sale.",
    maxPerMonth: "Enter a whole number of top-ups from 1 to 31.",
  };
  const BRANDS = { visa: "Visa", mastercard: "Mastercard", amex: "American Express", discover: "Discover",
    diners: "Diners Club", jcb: "JCB", unionpay: "UnionPay", cartes_bancaires: "Cartes Bancaires" };
  const TIME = { hour: "2-digit", minute: "2-digit" };

  function cardName(card) {
    const brand = String(card.brand || "card").toLowerCase();
    return `${BRANDS[brand] || brand.charAt(0).toUpperCase() + brand.slice(1).replace(/[-_]+/g, " ")} ending ${card.last4}`;
  }

  // The card as the page shows it, to tell a new card from the one shown before ("" for none).
  const cardKey = (card) => (card ? `${cardName(card)} ${card.expMonth}/${card.expYear}` : "");

  function topUpLoading(loading) {
    $("#autotopup-form").setAttribute("aria-busy", String(loading));
    $("#autotopup-loading").hidden = !loading;
    ["#autotopup-enabled", ...Object.values(TOPUP_FIELDS), "#autotopup-save"].forEach((id) => ($(id).disabled = loading));
  }

  function topUpStatus(text, kind = "info") {
    const status = $("#autotopup-status");
    status.textContent = text;
    status.dataset.kind = kind;
    status.hidden = !text;
  }

  function topUpUnits() {
    $("#autotopup-threshold + .unit").textContent = Math.abs(Number($("#autotopup-threshold").value)) === 1
      ? "credit" : "credits";
    $("#autotopup-max + .unit").textContent = Number($("#autotopup-max").value) === 1 ? "top-up a month" : "top-ups a month";
  }

  // The packages on sale, as the Buy credits card lists them; the chosen one kept (one no longer on
  // sale stays chosen, and says so). `selected`: the saved package, null for the default, undefined
  // to keep what is chosen now.
  function packageOptions(selected) {
    const select = $("#autotopup-package");
    const keep = selected === undefined ? select.value || state.topUpPackage : selected;
    const options = state.packages.map((p) => el("option", { value: p.id },
      `${p.name}: ${credits(p.credits)} for ${money(p.price, p.currency)}`));
    if (keep && !state.packages.some((p) => p.id === keep)) {
      options.push(el("option", { value: keep }, `${keep} (no longer on sale)`));
    }
    if (!options.length) options.push(el("option", { value: "" }, "No packages on sale"));
    select.replaceChildren(...options);
    if (keep) select.value = keep;
  }

  function showCard(card) {
    const line = $("#card-on-file");
    if (!card) {
      line.textContent = "No card on file";
    } else {
      const now = new Date();
      const expired = Number(card.expYear) < now.getFullYear()
        || (Number(card.expYear) === now.getFullYear() && Number(card.expMonth) < now.getMonth() + 1);
      const expiry = card.expMonth && card.expYear
        ? ` · ${expired ? "expired" : "expires"} ${String(card.expMonth).padStart(2, "0")}/${card.expYear}` : "";
      line.replaceChildren(el("span", { class: "card-name" }, cardName(card)),
        el("span", { class: `muted card-expiry${expired ? " expired" : ""}` }, expiry));
    }
    line.dataset.card = card ? "yes" : "no";
    $("#add-card").textContent = card ? "Add a new card" : "Add a card";
  }

  // What auto top-up does now: [state, sentence, kind].
  function topUpState(settings) {
    const auto = settings.autoTopUp;
    const t = settings.topUp || {};
    if (!auto || !auto.enabled) return ["off", "Auto top-up is off", "info"];
    if (t.pending) return ["pending", "Top-up in progress…", "info"];
    if (t.suspended === "package_unavailable") {
      return ["suspended", "Paused: the package is no longer on sale: choose another and save", "error"];
    }
    if (t.suspended === "no_card") return ["suspended", "Paused: no card on file: add a card", "error"];
    if (t.suspended) {
      const times = t.failures > 1 ? `${num(t.failures)} declined payments` : t.failures === 1 ? "a declined payment"
        : "declined payments";
      return ["suspended", `Paused after ${times}: add a new card`, "error"];
    }
    if (!settings.card) return ["no-card", "Paused: no card on file: add a card", "warn"];
    const retry = t.retryAfter ? Date.parse(t.retryAfter) : NaN;
    if (retry > Date.now()) {
      return ["retry", `Last top-up failed; next attempt after ${new Date(retry).toLocaleTimeString(undefined, TIME)}`, "warn"];
    }
    const started = Number(t.startedThisMonth) || 0;
    if (started >= auto.maxPerMonth) {
      return ["limit", `No more top-ups this month: ${num(started)} of ${num(auto.maxPerMonth)} done`, "warn"];
    }
    const pkg = state.packages.find((p) => p.id === auto.packageId);
    return ["next", `Next top-up: ${pkg ? pkg.name : auto.packageId} when you fall below ${credits(auto.threshold)}; `
      + `${num(started)} of ${num(auto.maxPerMonth)} this month`, "success"];
  }

  function showTopUpState() {
    clearTimeout(state.topUpTimer);
    state.topUpTimer = null;
    const line = $("#topup-state");
    if (!state.settings) return;
    const [now, text, kind] = topUpState(state.settings);
    line.dataset.state = now;
    line.dataset.kind = kind;
    if (line.textContent !== text) line.textContent = text;
    if (now !== "retry") return;
    // When the back-off ends, the settings say what comes next (a second later: the server's clock).
    const wait = Math.min(Date.parse(state.settings.topUp.retryAfter) - Date.now() + 1000, EXPIRY_LONGEST_WAIT_MS);
    state.topUpTimer = setTimeout(() => {
      state.topUpTimer = null;
      if (isSignedIn()) loadSettings().catch(() => {});
    }, Math.max(wait, 1000));
  }

  function showTopUp(settings, keepInputs) {
    if ($("#autotopup-form").getAttribute("aria-busy") === "true") topUpLoading(false);
    const auto = settings.autoTopUp || null;
    if (!keepInputs) {
      $("#autotopup-enabled").checked = Boolean(auto && auto.enabled);
      const threshold = auto ? auto.threshold
        : Number(settings.lowBalanceThreshold) > 0 ? settings.lowBalanceThreshold : cfg.lowBalance;
      $("#autotopup-threshold").value = String(threshold);
      $("#autotopup-max").value = String(auto ? auto.maxPerMonth : DEFAULT_MAX_PER_MONTH);
      state.topUpPackage = auto ? auto.packageId : null;
      packageOptions(state.topUpPackage);
      Object.values(TOPUP_FIELDS).forEach((id) => fieldError($(id), ""));
      state.topUpDirty = false;
      topUpUnits();
    }
    showCard(settings.card || null);
    showTopUpState();
  }

  function clearTopUp() {
    clearTimeout(state.topUpTimer);
    Object.assign(state, { topUpTimer: null, topUpWatch: null, topUpDirty: false, topUpPackage: null });
    $("#autotopup-enabled").checked = false;
    ["#autotopup-threshold", "#autotopup-max"].forEach((id) => ($(id).value = ""));
    Object.values(TOPUP_FIELDS).forEach((id) => fieldError($(id), ""));
    $("#topup-state").textContent = "";
    $("#save-card").checked = false;
    showCard(null);
    topUpStatus("");
    topUpLoading(true); // until the signed-in user's settings arrive
  }

  // A top-up that ended since the settings were last read (it was pending, or one more started this
  // month and none is pending now): its credits, or its failure, show in the balance and the history.
  // One still pending is watched until it ends.
  function followTopUp(before, after) {
    const was = before && before.topUp;
    const now = after.topUp;
    if (!now) return;
    if (now.pending) return watchTopUp();
    if (was && (was.pending || was.startedThisMonth !== now.startedThisMonth)) {
      Promise.all([loadBalance(), loadHistory()]).catch(() => {}); // a missed read is made up by the next refresh
    }
  }

  function watchTopUp() {
    if (state.topUpWatch || !isSignedIn()) return;
    const watch = (state.topUpWatch = { since: Date.now() });
    (async () => {
      const waited = () => Date.now() - watch.since;
      while (state.topUpWatch === watch && waited() < TOPUP_WATCH_MS) {
        await sleep(waited() < TOPUP_FAST_MS ? TOPUP_POLL_MS : TOPUP_SLOW_POLL_MS);
        if (state.topUpWatch !== watch || !isSignedIn()) break; // signed out meanwhile
        // showSettings sees the end (and reads the balance and the history again); a missed poll is
        // made up by the next one.
        await loadSettings().catch(() => {});
        if (!(state.settings && state.settings.topUp && state.settings.topUp.pending)) break;
      }
      if (state.topUpWatch === watch) state.topUpWatch = null;
    })();
  }

  function readTopUpForm(enabled) {
    const saved = (state.settings && state.settings.autoTopUp) || null;
    const body = { enabled };
    let first = null;
    for (const [field, id] of Object.entries(TOPUP_FIELDS)) {
      const input = $(id);
      let value = null;
      if (field === "packageId") value = input.value || null;
      else if (input.value.trim() !== "" && !input.validity.badInput) value = Number(input.value);
      if (value === null && !enabled && saved) value = saved[field]; // turning it off keeps what was saved
      if (value === null) {
        fieldError(input, field === "packageId" ? TOPUP_RULES.packageId : "Enter a whole number.");
        first = first || input;
      }
      body[field] = value;
    }
    return { body, first };
  }

  // The fields a refusal names: the API's `errors` (field "autoTopUp.threshold"), else its message.
  function topUpFieldsOf(err) {
    if (err.code === "package_not_found") return ["packageId"];
    const named = (err.details.errors || []).map((issue) => String(issue.field || ""));
    named.push(String(err.message || ""));
    return Object.keys(TOPUP_FIELDS).filter((field) => named.some((text) => new RegExp(`\\b${field}\\b`).test(text)));
  }

  async function saveTopUp(event) {
    event.preventDefault();
    const enabled = $("#autotopup-enabled").checked;
    Object.values(TOPUP_FIELDS).forEach((id) => fieldError($(id), ""));
    const { body, first } = readTopUpForm(enabled);
    if (first) {
      first.focus();
      return topUpStatus("Not saved: check the highlighted field.", "error");
    }
    const button = $("#autotopup-save");
    button.disabled = true;
    topUpStatus("Saving…");
    try {
      const answer = await api("PUT", "/credits/settings", { autoTopUp: body });
      state.topUpDirty = false;
      if (answer && typeof answer.lowBalanceThreshold === "number") showSettings(answer, state.settingsDirty);
      else await loadSettings();
      topUpStatus(enabled ? "Auto top-up is on." : "Auto top-up is off.", "success");
    } catch (err) {
      if (err.code === "card_required") {
        return topUpStatus("Add a card first: auto top-up pays with the card on file.", "error");
      }
      const fields = err.status === 400 || err.code === "package_not_found" ? topUpFieldsOf(err) : [];
      fields.forEach((field) => fieldError($(TOPUP_FIELDS[field]), TOPUP_RULES[field]));
      if (fields.length) {
        $(TOPUP_FIELDS[fields[0]]).focus();
        return topUpStatus("Not saved: check the highlighted field.", "error");
      }
      topUpStatus(err.status === 503 ? "Not saved: the service is busy. Please try again in a moment."
        : `Not saved: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  // "Add a card": Stripe's page saves it (a Checkout Session in setup mode), then brings the user back.
  async function addCard(event) {
    const button = event.currentTarget;
    button.disabled = true;
    showCheckout("");
    say("Opening Stripe to add a card…", "info");
    try {
      const { checkoutUrl, sessionId } = await api("POST", "/credits/cards", {});
      sessionStorage.setItem(CARD_KEY, JSON.stringify({ sessionId: sessionId || null,
        card: cardKey(state.settings && state.settings.card) }));
      location.assign(checkoutUrl);
    } catch (err) {
      report(err);
      button.disabled = false;
    }
  }

  function addingCard() {
    try {
      return JSON.parse(sessionStorage.getItem(CARD_KEY) || "null");
    } catch {
      return null;
    }
  }

  // Wait for a card other than `before` (a card key) to be on file, as the webhook saves it. A card
  // that looks the same as the one before (the same test card again) counts after SAME_CARD_MS.
  const SAME_CARD_MS = 5000;
  async function awaitCard(before) {
    const start = Date.now();
    while (Date.now() - start < POLL_SECONDS * 1000 && isSignedIn()) {
      await loadSettings().catch(() => {});
      const card = state.settings && state.settings.card;
      if (card && (cardKey(card) !== before || Date.now() - start >= SAME_CARD_MS)) return card;
      await sleep(1000);
    }
    return null;
  }

  // Back from Stripe's page in setup mode: say when the card is on file.
  async function cardReturn(result, adding, sessionId) {
    sessionStorage.removeItem(CARD_KEY);
    if (result === "cancelled") return showCheckout("Adding a card was cancelled: no card was saved.", "info");
    if (!isSignedIn()) return showCheckout("Card received. Sign in to see it.", "info");
    state.checkoutSession = sessionId;
    const known = sessionId && outcomes()[sessionId];
    if (known) return showCheckout(known.text, known.kind);
    showCheckout("Card received — waiting for Stripe to confirm it…", "info");
    const card = await awaitCard(adding.card);
    if (card) return settleCheckout(`Card saved: ${cardName(card)}. Auto top-up pays with it.`, "success");
    showCheckout("Your card is being saved: it shows under Auto top-up once Stripe confirms it.", "pending", true);
    $("#checkout-refresh").onclick = () => loadSettings()
      .then(() => state.settings.card && settleCheckout(`Card saved: ${cardName(state.settings.card)}.`, "success"))
      .catch(report);
  }

  // ---- notifications (local stack: the user's events on the local event bus) -----------------
  function noteSentence({ detailType, detail: d }) {
    switch (detailType) {
      case "Credits Purchased": {
        const currency = String(d.currency || "").toLowerCase();
        const pkg = state.packages.find((p) => p.credits === d.credits && p.price === d.monetaryAmount
          && String(p.currency).toLowerCase() === currency);
        if (pkg) return `${credits(d.credits)} added: ${pkg.name}.`;
        return d.monetaryAmount != null && currency
          ? `${credits(d.credits)} added for ${money(d.monetaryAmount, currency)}.` : `${credits(d.credits)} added.`;
      }
      case "Credits Clawed Back":
        return `${credits(d.credits)} taken back after a ${d.reason === "dispute" ? "dispute" : "refund"}; `
          + `your balance is ${num(d.balance)}.`;
      case "Credits Used":
        return `${credits(d.credits)} spent: ${actionLabel(d.description) || d.description || "usage"}.`;
      case "Credits Granted":
        return `${credits(Math.abs(d.credits))} ${d.credits < 0 ? "taken away" : "added"} `
          + `(${d.type === "gift" ? "a gift" : "an adjustment"}).`;
      case "Credits Restored":
        return `${credits(d.credits)} given back: the dispute was closed in your favour; your balance is ${num(d.balance)}.`;
      case "Credits Expired":
        return `${credits(d.credits)} expired; your balance is ${num(d.balance)}.`;
      case "Credits Expiring Soon":
        return `${expiryText({ amount: d.credits, expiresAt: d.expiresAt })}${d.label ? ` (${d.label})` : ""}.`;
      case "Balance Low":
        return d.balance < 0 ? `Your balance is ${num(d.balance)}, under your alert of ${num(d.threshold)}: `
          + "buy credits to pay it back."
          : `Your balance is low: ${credits(d.balance)} left (under ${num(d.threshold)}).`;
      case "Balance Negative":
        return `Your balance is ${num(d.balance)}: buy credits to pay it back.`;
      case "Auto Top-Up Succeeded":
        return `Auto top-up: ${d.packageName || d.packageId}, ${credits(d.credits)}`
          + `${d.amount != null && d.currency ? ` for ${money(d.amount, d.currency)}` : ""}, paid with your saved card.`;
      case "Auto Top-Up Failed":
        return `Auto top-up failed: ${d.message || "the payment did not go through."}${!d.suspended ? ""
          : d.code === "package_unavailable" ? " Auto top-up is paused: choose another package."
            : " Auto top-up is paused until you add a new card."}`;
      case "Spend Limit Reached": {
        const next = nextOverLimit(d.limit, d.spent);
        return `Monthly spending limit of ${credits(d.limit)} reached. ${num(d.spent)} of ${num(d.limit)} used`
          + `${next ? `; ${next}` : ""}.`;
      }
      default:
        return `${detailType}.`;
    }
  }

  function noteItem(note, isNew) {
    const when = new Date(note.time);
    const item = el("li", { class: "notification", "data-type": note.detailType.toLowerCase().replace(/\s+/g, "-"),
      "data-id": note.id },
      el("p", { class: "notification-text" }, noteSentence(note)),
      el("time", { class: "notification-time", dateTime: note.time }, when.toLocaleString(undefined, DATE_FORMAT)));
    if (isNew) {
      item.classList.add("is-new");
      setTimeout(() => item.classList.remove("is-new"), NOTE_NEW_MS);
    }
    return item;
  }

  function showNotes(notes) {
    // Newest first; only what this page has not shown yet is added, at the top. What is already there
    // when the page opens is listed plainly; what arrives later is highlighted for a while and announced.
    const fresh = notes.filter((n) => !state.notes.has(n.id));
    fresh.forEach((n) => state.notes.add(n.id));
    const list = $("#notifications");
    list.prepend(...fresh.map((n) => noteItem(n, state.notesLoaded)));
    while (list.children.length > NOTES_MAX) list.lastElementChild.remove();
    if (state.notesLoaded && fresh.length) $("#notifications-live").textContent = fresh.map(noteSentence).join(" ");
    state.notesLoaded = true;
    $("#notifications-empty").hidden = list.children.length > 0;
  }

  async function pollNotes() {
    if (state.notesBusy || !isSignedIn() || document.hidden) return;
    state.notesBusy = true;
    const token = await getToken();
    try {
      const { notifications } = await api("GET", "/local/notifications");
      if (token === (await getToken()) && isSignedIn()) showNotes(notifications); // still the same user
    } catch {
      // A missed poll is made up by the next one.
    } finally {
      state.notesBusy = false;
    }
  }

  function startNotifications() {
    if (cfg.auth !== "local" || state.notesTimer) return;
    packagesReady.finally(pollNotes); // purchases are named after their package
    state.notesTimer = setInterval(pollNotes, NOTES_EVERY_MS);
  }

  function stopNotifications() {
    clearInterval(state.notesTimer);
    Object.assign(state, { notesTimer: null, notesLoaded: false });
    state.notes.clear();
    $("#notifications").replaceChildren();
    $("#notifications-empty").hidden = false;
    $("#notifications-live").textContent = "";
  }

  // ---- packages and checkout ----------------------------------------------------------------
  // Cheapest first within each currency; the currency most packages are priced in first (the main
  // catalog, then regional variants), ties in the order the catalog lists them.
  function sortPackages(packages) {
    const code = (p) => String(p.currency).toLowerCase();
    const count = (c) => packages.filter((p) => code(p) === c).length;
    const seen = [...new Set(packages.map(code))];
    const currencies = [...seen].sort((a, b) => count(b) - count(a) || seen.indexOf(a) - seen.indexOf(b));
    const rank = (p) => currencies.indexOf(code(p));
    return [...packages].sort((a, b) => rank(a) - rank(b) || a.price - b.price || b.credits - a.credits
      || String(a.name).localeCompare(String(b.name)));
  }

  async function loadPackages() {
    const box = $("#packages");
    try {
      const { packages } = await api("GET", "/credit-packages");
      state.packages = sortPackages(packages);
      box.replaceChildren(...state.packages.map((p) => {
        const price = money(p.price, p.currency);
        const buy = el("button", { type: "button", class: "buy", "aria-label": `Buy ${p.name} for ${price}` }, "Buy");
        buy.addEventListener("click", () => startCheckout(p, buy));
        return el("article", { class: "package", "data-package-id": p.id },
          el("div", { class: "package-info" },
            el("h3", { class: "package-name" }, p.name),
            el("p", { class: "package-credits" }, credits(p.credits)),
            el("p", { class: "package-desc muted" }, p.description || "")),
          el("div", { class: "package-buy" }, el("p", { class: "package-price" }, price), buy));
      }));
      if (!packages.length) box.append(el("p", { class: "muted" }, "No packages are on sale right now."));
      packageOptions(); // the auto top-up's choice of package, and its state line, name the packages
      showTopUpState();
    } catch (err) {
      box.replaceChildren(el("p", { class: "muted" }, `Packages could not be loaded: ${err.message}`));
    }
    box.setAttribute("aria-busy", "false");
  }

  async function startCheckout(pkg, button) {
    if (!isSignedIn()) {
      if (cfg.auth === "local") $("#user-name").focus();
      return say("Sign in to buy credits.", "info");
    }
    button.disabled = true;
    showCheckout("");
    say(`Opening checkout for ${pkg.name}…`, "info");
    try {
      const before = state.balance ?? (await loadBalance());
      const saveCard = $("#save-card").checked; // sent only when asked: a plain purchase's body is unchanged
      const { checkoutUrl } = await api("POST", "/credits/checkout", saveCard ? { packageId: pkg.id, saveCard: true }
        : { packageId: pkg.id });
      sessionStorage.setItem(BEFORE_KEY, String(before));
      sessionStorage.removeItem(CARD_KEY); // this checkout buys: not the card one left for earlier
      if (saveCard) sessionStorage.setItem(SAVE_CARD_KEY, cardKey(state.settings && state.settings.card));
      else sessionStorage.removeItem(SAVE_CARD_KEY);
      location.assign(checkoutUrl);
    } catch (err) {
      report(err);
      button.disabled = false;
    }
  }

  // What became of the checkouts this tab came back from, so coming back to one again (Back, then the
  // hosted page's link to the site) says what happened instead of waiting for credits already added.
  function outcomes() {
    try {
      return JSON.parse(sessionStorage.getItem(OUTCOMES_KEY) || "{}") || {};
    } catch {
      return {};
    }
  }

  function settleCheckout(text, kind) {
    showCheckout(text, kind);
    sessionStorage.removeItem(BEFORE_KEY);
    if (!state.checkoutSession) return;
    const known = Object.entries(outcomes()).filter(([id]) => id !== state.checkoutSession).slice(-19);
    known.push([state.checkoutSession, { text, kind }]);
    sessionStorage.setItem(OUTCOMES_KEY, JSON.stringify(Object.fromEntries(known)));
  }

  async function confirmPurchase(before) {
    const balance = await loadBalance();
    if (balance <= before) return false;
    settleCheckout(`Payment confirmed: +${credits(balance - before)}`, "success");
    await loadHistory();
    // A purchase that saves its card: the card shows under Auto top-up once the webhook stored it.
    const saving = sessionStorage.getItem(SAVE_CARD_KEY);
    sessionStorage.removeItem(SAVE_CARD_KEY);
    if (saving !== null) awaitCard(saving); // not awaited: the purchase is confirmed already
    return true;
  }

  const PAYMENT_FAILED = "The payment failed: nothing was charged and no credits were added.";

  async function checkoutReturn() {
    const params = new URLSearchParams(location.search);
    const result = params.get("checkout");
    if (result) history.replaceState(null, "", location.pathname + location.hash); // read once, then clean
    const adding = result && addingCard();
    const returned = params.get("session_id");
    if (adding && (result === "cancelled" || !returned || !adding.sessionId || adding.sessionId === returned)) {
      return cardReturn(result, adding, params.get("session_id"));
    }
    if (result === "cancelled") {
      sessionStorage.removeItem(BEFORE_KEY);
      sessionStorage.removeItem(SAVE_CARD_KEY);
      return showCheckout("Checkout cancelled — nothing was charged.", "info");
    }
    if (result !== "success") return;
    if (!isSignedIn()) return showCheckout("Payment received. Sign in to see your credits.", "info");
    state.checkoutSession = params.get("session_id");
    const known = state.checkoutSession && outcomes()[state.checkoutSession];
    if (known) return showCheckout(known.text, known.kind);
    const stored = sessionStorage.getItem(BEFORE_KEY);
    const before = stored !== null ? Number(stored) : state.balance ?? 0;
    showCheckout("Payment received — waiting for confirmation…", "info");
    const deadline = Date.now() + POLL_SECONDS * 1000;
    let confirmed = false;
    while (!confirmed && Date.now() < deadline && isSignedIn()) {
      confirmed = await confirmPurchase(before).catch(() => false);
      if (confirmed) break;
      // With the Stripe emulator the page sees at once that the payment is still processing, or failed.
      const payment = await toolsPayment(state.checkoutSession);
      if (payment && payment.state !== "paid") break;
      await sleep(1000);
    }
    if (confirmed) return;
    const payment = await toolsPayment(state.checkoutSession);
    if (payment && payment.state === "failed") return settleCheckout(PAYMENT_FAILED, "error");
    if (payment && payment.state === "paid" && (await confirmPurchase(before).catch(() => false))) return;
    const hint = payment ? " The test payment tools below can clear or fail it." : "";
    showCheckout(`Your payment is processing. Credits appear when it clears.${hint}`, "pending", true);
    $("#checkout-refresh").onclick = () => confirmPurchase(before)
      .then((done) => done || say("Still processing: no new credits yet.", "info")).catch(report);
  }

  // ---- paid actions -------------------------------------------------------------------------
  // An action's label: the page's own name for it (cfg.actionLabels), else its id read as words.
  const labelOf = (id) => cfg.actionLabels[id] || id.charAt(0).toUpperCase() + id.slice(1).replace(/[-_]+/g, " ");

  async function loadPrices() {
    try {
      const { prices } = await api("GET", "/credit-prices");
      cfg.actions = prices.map((p) => ({ id: p.action, label: labelOf(p.action), cost: p.credits }));
      renderActions();
    } catch (err) {
      $("#actions").replaceChildren(el("p", { class: "muted" }, `Prices could not be loaded: ${err.message}`));
    }
  }

  function renderActions() {
    $("#actions").replaceChildren(...cfg.actions.map((action, i) => {
      const reason = `action-reason-${i}`;
      const button = el("button", { type: "button", class: "action", "data-action": action.id, "aria-describedby": reason },
        el("span", { class: "action-label" }, action.label), el("span", { class: "action-cost" }, ` · ${credits(action.cost)}`));
      button.addEventListener("click", () => useCredits(action, button));
      return el("div", { class: "action-item" }, button, el("p", { class: "action-reason", id: reason, hidden: true }));
    }));
    updateActions();
  }

  // An action the user cannot afford is disabled, and says why (next to it, and as its description).
  function updateActions() {
    const have = state.available ?? state.balance;
    for (const action of cfg.actions) {
      const button = document.querySelector(`button.action[data-action="${CSS.escape(action.id)}"]`);
      if (!button) continue;
      const busy = state.inflight.has(action.id);
      let why = "";
      let blocked = "balance";
      if (!busy && state.balance !== null && state.balance < 0) why = "Your balance is negative: buy credits to continue";
      else if (!busy && have !== null && have < action.cost) {
        why = `Needs ${credits(action.cost)}, you have ${num(have)}${have !== state.balance ? " available" : ""}`;
      } else if (!busy && overLimit(action)) {
        const { spentThisMonth: spent, monthlySpendLimit: limit } = state.settings;
        why = `Monthly spending limit: ${num(spent)} of ${num(limit)} used; ${action.label} needs ${num(action.cost)}`;
        blocked = "limit";
      }
      button.dataset.blocked = why ? blocked : "";
      const reason = document.getElementById(button.getAttribute("aria-describedby"));
      reason.textContent = why;
      reason.hidden = !why;
      button.title = why;
      button.classList.toggle("unaffordable", Boolean(why));
      button.disabled = busy || Boolean(why);
    }
  }

  // Once the API refused an action for the monthly limit, actions that would pass it are not offered
  // until the limit is raised or cleared (the month's spending comes with the settings).
  function overLimit(action) {
    const s = state.settings;
    return state.limitRefused && Boolean(s) && s.monthlySpendLimit != null
      && s.spentThisMonth + action.cost > s.monthlySpendLimit;
  }

  // The cheapest action that no longer fits this month's limit, as "Analyze needs 5", or "".
  function nextOverLimit(limit, spent) {
    const over = cfg.actions.filter((a) => spent + a.cost > limit).sort((a, b) => a.cost - b.cost)[0];
    return over ? `${over.label} needs ${num(over.cost)}` : "";
  }

  async function useCredits(action, button) {
    // One key per separate click; while a request is in flight further clicks reuse it (not sent again).
    if (state.inflight.has(action.id)) return;
    if ($("#checkout-status").dataset.state !== "pending") showCheckout("");
    const key = state.retryKeys.get(action.id) || uuid();
    const fail = $("#fail-next").checked;
    state.inflight.set(action.id, key);
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    say(`${action.label}: running…`, "info");
    // A premium action (the example function) holds its price while it runs: show the hold.
    const peek = cfg.actionPath ? setTimeout(() => loadBalance().catch(() => {}), 300) : null;
    try {
      if (cfg.actionPath) {
        const r = await request("POST", cfg.actionPath + action.id, fail ? { fail: true } : {}, { "Idempotency-Key": key });
        const charged = Number(r.headers.get("Credits-Charged") || 0);
        state.retryKeys.delete(action.id);
        say(`${action.label} done: ${credits(charged)} spent.`, "success");
        watchUsage(charged); // not awaited: the chart follows when the stream has counted it
        await refresh();
      } else {
        const r = await api("POST", "/credits/use", { action: action.id }, { "Idempotency-Key": key });
        state.retryKeys.delete(action.id);
        setBalance(r.balance);
        addRows([{ id: r.transactionId, amount: -r.charged, balanceAfter: r.balance, type: "usage",
          description: action.id, createdAt: new Date().toISOString() }], true);
        say(`${action.label}: ${credits(r.charged)} spent.`, "success");
        loadSettings().catch(() => {});
        watchUsage(r.charged);
      }
    } catch (err) {
      // After a network failure or a 503 the outcome is unknown: the next click retries with the same key.
      if (err.code === "network" || err.code === "temporarily_unavailable") state.retryKeys.set(action.id, key);
      else state.retryKeys.delete(action.id);
      if (err.code === "insufficient_credits") {
        const have = err.details.available ?? err.details.balance;
        if (typeof err.details.balance === "number") setBalance(err.details.balance, have);
        say(`Not enough credits: this needs ${credits(err.details.required)}, you have ${num(have)} available.`, "error");
        refresh(); // spent or clawed back elsewhere: bring the history and the month's spending up to date
      } else if (err.code === "spend_limit_reached") {
        const { spent, limit } = err.details;
        say(`Monthly spending limit reached: you have spent ${num(spent)} of your ${credits(limit)} this month; `
          + `${action.label} needs ${num(action.cost)}. Raise or clear the limit in Settings to continue.`, "error");
        state.limitRefused = true;
        if (state.settings && typeof spent === "number" && typeof limit === "number") {
          Object.assign(state.settings, { spentThisMonth: spent, monthlySpendLimit: limit });
        }
        refresh(); // spent elsewhere: the balance, the history and the month's spending up to date
      } else if (err.status >= 500 && err.code !== "temporarily_unavailable" && cfg.actionPath) {
        say(`${action.label} failed, so nothing was charged.`, "error");
        refresh();
      } else report(err);
    } finally {
      clearTimeout(peek);
      state.inflight.delete(action.id);
      button.removeAttribute("aria-busy");
      updateActions();
      if (fail) $("#fail-next").checked = false;
    }
  }

  // ---- Stripe test tools (LOCAL ONLY: `make dev` with the Stripe emulator) ---------------------
  // The signed-in user's payments at the emulator, with buttons that play Stripe, the bank and the
  // card network: clear or fail a pending bank payment, refund, open and close a dispute. The page
  // shows them only when the local stack's config says "emulator" and its gateway serves the route.
  const PAYMENT_STATES = { processing: "Processing: paid later by bank debit", failed: "Payment failed",
    paid: "Paid" };
  const METHODS = { card: "by card", us_bank_account: "by bank debit" };
  const DISPUTES = { needs_response: "disputed, waiting for the bank's decision", won: "dispute won",
    lost: "dispute lost", warning_closed: "dispute closed", under_review: "dispute under review" };

  async function toolsEnabled() {
    const local = await localConfig;
    return cfg.auth === "local" && !state.toolsMissing && Boolean(local && local.stripe === "emulator");
  }

  function showTools() {
    $("#stripe-tools").hidden = !(state.tools && isSignedIn());
  }

  async function loadPayments() {
    if (!isSignedIn() || !(await toolsEnabled())) return;
    const token = await getToken();
    let payments;
    try {
      ({ payments } = await api("GET", "/local/stripe/payments"));
    } catch (err) {
      if (err.status !== 404) throw err;
      Object.assign(state, { tools: false, toolsMissing: true }); // a gateway not given the emulator: no tools
      return showTools();
    }
    if (token !== (await getToken()) || !isSignedIn()) return; // signed out or in as someone else meanwhile
    // A card saved in setup mode is not a payment: it shows under Auto top-up, not here.
    Object.assign(state, { tools: true, payments: payments.filter((p) => p.mode !== "setup") });
    learnPurchases(state.payments.map((p) => [p.paymentIntent, p.product]));
    if (!state.toolsBusy) renderPayments();
    showTools();
    await loadNextTopUp();
  }

  // What the next auto top-up's payment does at the emulator (its off-session PaymentIntent): pays,
  // is declined, or needs authentication (which a payment made without the user cannot ask for). The
  // gateway passes it to the emulator's /_emulator/next_off_session_payment; without that route, no control.
  const NEXT_TOPUP_PATH = "/local/stripe/next_off_session_payment";
  const NEXT_TOPUP_SAID = {
    succeed: "The next auto top-up will be paid.",
    decline: "The next auto top-up will be declined by the bank.",
    authentication_required: "The next auto top-up will need authentication, which a payment made while you are "
      + "away cannot ask for: it will fail.",
  };

  function showNextTopUp(outcome) {
    document.querySelectorAll("#next-topup button[data-outcome]").forEach((button) =>
      button.setAttribute("aria-pressed", String(button.dataset.outcome === outcome)));
    $("#next-topup").hidden = state.nextTopUpMissing;
    // Used up by a top-up: "The next auto top-up will …" is no longer true.
    if (!outcome && Object.values(NEXT_TOPUP_SAID).includes($("#stripe-tools-result").textContent)) toolsSay("");
  }

  async function loadNextTopUp() {
    if (state.nextTopUpMissing) return;
    try {
      showNextTopUp((await api("GET", NEXT_TOPUP_PATH)).nextOffSessionPayment);
    } catch (err) {
      if (err.status !== 404) return; // the emulator did not answer: the control stays as it was
      state.nextTopUpMissing = true; // a gateway without the route: the control is not offered
      showNextTopUp(null);
    }
  }

  async function setNextTopUp(event) {
    const button = event.target.closest("button[data-outcome]");
    if (!button || state.toolsBusy) return;
    const buttons = document.querySelectorAll("#next-topup button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const r = await api("POST", NEXT_TOPUP_PATH, { outcome: button.dataset.outcome });
      showNextTopUp(r.nextOffSessionPayment);
      toolsSay(NEXT_TOPUP_SAID[button.dataset.outcome], "success");
    } catch (err) {
      toolsSay(err.message, "error");
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  async function toolsPayment(sessionId) {
    if (!sessionId || !(await toolsEnabled())) return null;
    await loadPayments().catch(() => {});
    return state.payments.find((p) => p.id === sessionId) || null;
  }

  function toolsSay(text, kind = "info") {
    const line = $("#stripe-tools-result");
    line.textContent = text;
    line.dataset.kind = kind;
  }

  // Money typed by a person ("2.50", "2,50", "800" yen) in the currency's minor unit, or null.
  function minorUnits(text, currency) {
    const value = String(text).trim();
    if (ZERO_DECIMAL.has(String(currency).toLowerCase())) return /^\d{1,9}$/.test(value) ? Number(value) : null;
    const match = /^(\d{1,7})(?:[.,](\d{1,2}))?$/.exec(value);
    return match ? Number(match[1]) * 100 + Number((match[2] || "0").padEnd(2, "0")) : null;
  }

  function majorUnits(minor, currency) {
    if (ZERO_DECIMAL.has(String(currency).toLowerCase())) return String(minor);
    return `${Math.floor(minor / 100)}.${String(minor % 100).padStart(2, "0")}`;
  }

  function paymentStatus(p) {
    const parts = [p.state === "paid" ? `Paid ${METHODS[p.method] || ""}`.trim() : PAYMENT_STATES[p.state] || p.state];
    if (p.refunded) parts.push(p.refunded >= p.amount ? "refunded in full" : `${money(p.refunded, p.currency)} refunded`);
    if (p.dispute) parts.push(DISPUTES[p.dispute] || `dispute ${p.dispute}`);
    return parts.join(" · ");
  }

  function paymentItem(p) {
    const titleId = `payment-${p.id}`;
    const tool = (action, label, body = () => ({})) => {
      const button = el("button", { type: "button", class: "ghost small", "data-tool": action }, label);
      button.addEventListener("click", () => runTool(p, action, body));
      return button;
    };
    const tools = [];
    if (p.actions.includes("async_succeed")) tools.push(tool("async_succeed", "Payment clears"));
    if (p.actions.includes("async_fail")) tools.push(tool("async_fail", "Payment fails"));
    if (p.actions.includes("refund")) {
      const input = el("input", { type: "text", inputMode: "decimal", class: "refund-amount",
        value: majorUnits(p.amount - p.refunded, p.currency), "aria-label": `Amount to refund, in ${p.currency.toUpperCase()}` });
      tools.push(el("span", { class: "refund" }, el("span", { class: "refund-currency", "aria-hidden": "true" },
        p.currency.toUpperCase()), input, tool("refund", "Refund", () => ({ amount: input.value }))));
    }
    if (p.actions.includes("dispute")) tools.push(tool("dispute", "Open a dispute"));
    if (p.actions.includes("close_dispute")) {
      tools.push(tool("close_dispute", "Close dispute: won", () => ({ status: "won" })),
        tool("close_dispute", "Close dispute: lost", () => ({ status: "lost" })));
    }
    if (!tools.length) tools.push(el("p", { class: "muted" }, "Nothing left to try on this payment."));
    const when = new Date(p.created * 1000).toLocaleString(undefined, DATE_FORMAT);
    const bought = `${p.product}${p.credits ? ` · ${credits(p.credits)}` : ""} · ${money(p.amount, p.currency)}`;
    return el("li", { class: "payment", "data-session-id": p.id, "data-state": p.state, "aria-labelledby": titleId },
      el("div", { class: "payment-info" },
        el("p", { class: "payment-title", id: titleId }, bought),
        el("p", { class: "payment-status muted" }, `${paymentStatus(p)} · ${when}`)),
      el("div", { class: "payment-tools" }, ...tools));
  }

  function renderPayments() {
    $("#payments").replaceChildren(...state.payments.map(paymentItem));
    $("#payments-empty").hidden = state.payments.length > 0;
  }

  function toolResult(action, before, after, body, delta) {
    const name = before.product;
    const change = delta > 0 ? `+${credits(delta)}` : delta < 0 ? `${credits(-delta)} taken back` : "your balance is unchanged";
    switch (action) {
      case "async_succeed":
        return `Payment cleared for ${name}: ${change}.`;
      case "async_fail":
        return `Payment failed for ${name}: nothing was charged, ${delta === 0 ? "no credits were added" : change}.`;
      case "refund":
        return `Refunded ${money(after.refunded - before.refunded, before.currency)} of ${name}: ${change}.`;
      case "dispute":
        return `Dispute opened on ${name}: ${delta < 0 ? `${credits(-delta)} held back while the bank decides` : change}.`;
      default:
        return body.status === "won"
          ? `Dispute won: ${name}, ${delta > 0 ? `${credits(delta)} restored` : change}.`
          : `Dispute lost: ${name}, ${delta === 0 ? "the credits held back stay taken" : change}.`;
    }
  }

  async function runTool(payment, action, body) {
    if (state.toolsBusy) return;
    const params = body();
    if (action === "refund") {
      params.amount = minorUnits(params.amount, payment.currency);
      if (!params.amount) return toolsSay(`Enter an amount to refund, up to ${money(payment.amount - payment.refunded, payment.currency)}.`, "error");
    }
    state.toolsBusy = true;
    $("#payments").setAttribute("aria-busy", "true");
    document.querySelectorAll("#payments button, #payments input").forEach((control) => (control.disabled = true));
    toolsSay(`${payment.product}: asking the Stripe emulator…`, "info");
    try {
      const before = await loadBalance();
      const r = await api("POST", `/local/stripe/payments/${encodeURIComponent(payment.id)}/${action}`, params);
      await Promise.all([loadBalance(), loadHistory(), loadSettings()]);
      const delta = state.balance - before;
      const text = toolResult(action, payment, r.payment || payment, params, delta);
      if (r.delivered) toolsSay(text, "success");
      else toolsSay(`${text} Stripe could not deliver the webhook, so your balance shows it once Stripe retries.`, "warn");
      if (state.checkoutSession === payment.id && $("#checkout-status").dataset.state === "pending") {
        if (action === "async_succeed" && delta > 0) settleCheckout(`Payment confirmed: +${credits(delta)}`, "success");
        if (action === "async_fail") settleCheckout(PAYMENT_FAILED, "error");
      }
    } catch (err) {
      toolsSay(err.message, "error");
    } finally {
      state.toolsBusy = false;
      $("#payments").setAttribute("aria-busy", "false");
      await loadPayments().catch(report);
      renderPayments();
    }
  }

  // ---- start --------------------------------------------------------------------------------
  async function signIn(event) {
    event.preventDefault();
    const button = $("#signin-button");
    button.disabled = true;
    try {
      const r = await api("POST", "/local/sign-in", { user: $("#user-name").value.trim() });
      localStorage.setItem(TOKEN_KEY, r.token);
      localStorage.setItem(USER_KEY, r.userId);
      say("", "info");
      signedIn(r.userId);
      await refresh();
    } catch (err) {
      say(err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function showPaymentsMode() {
    const local = await localConfig;
    if (!local || !local.stripe) return;
    $("#payments-mode").textContent = local.stripe === "real" ? "Stripe test mode" : "Test payments: no real money";
    $("#payments-mode").hidden = false;
  }

  async function start() {
    $("#signin-form").addEventListener("submit", signIn);
    $("#signout-button").addEventListener("click", () => {
      if (cfg.auth === "token" && typeof cfg.signOut === "function") cfg.signOut();
      signedOut();
      say("Signed out.", "info");
    });
    $("#refresh-button").addEventListener("click", refresh);
    $("#settings-form").addEventListener("submit", saveSettings);
    $("#settings-form").addEventListener("input", () => { state.settingsDirty = true; settingsUnits(); });
    $("#autotopup-form").addEventListener("submit", saveTopUp);
    $("#autotopup-form").addEventListener("input", () => { state.topUpDirty = true; topUpUnits(); });
    $("#add-card").addEventListener("click", addCard);
    $("#next-topup").addEventListener("click", setNextTopUp);
    $("#history-csv").addEventListener("click", downloadCsv);
    $("#history-more").addEventListener("click", (e) => {
      e.target.disabled = true;
      loadHistory(true).catch(report).finally(() => (e.target.disabled = false));
    });
    const prices = loadPrices(); // never rejects: a failure is said in the actions' place
    settingsLoading(true); // until the signed-in user's settings arrive
    topUpLoading(true);
    const packages = (packagesReady = loadPackages());
    // The local stack's own config (no such route on AWS): which Stripe it uses, and so whether the
    // page offers the Stripe emulator's test tools.
    localConfig = cfg.auth !== "local" ? Promise.resolve(null)
      : fetch(`${apiBase}/local/config.json`).then((r) => (r.ok ? r.json() : null)).catch(() => null);
    showPaymentsMode();
    if (cfg.auth === "local") {
      const token = localStorage.getItem(TOKEN_KEY);
      if (token) signedIn(localStorage.getItem(USER_KEY) || userFromToken(token));
      else signedOut();
    } else {
      signedIn(cfg.userName || userFromToken((await getToken().catch(() => null)) || ""));
    }
    await prices; // the history names usage by its action's label
    if (isSignedIn()) await refresh();
    await packages;
    await checkoutReturn();
  }

  start();
})();
