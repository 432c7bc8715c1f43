// riskgate console: renders the board pushed by /api/events (server-sent events).
// No framework, no build step. Every name and reason comes from Kafka, so text is
// only ever set with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const view = { board: null, me: null, detail: null, pending: new Map() };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// -- formatting ----------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");
function utc(ts) {
  if (ts === null || ts === undefined) return "";
  const d = new Date(ts);
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}
function utcDate(ts) {
  const d = new Date(ts);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${utc(ts)}`;
}
const money = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));
const qty = (v) => (v === null || v === undefined ? "–" : String(+v.toFixed(8)));

function blocksCell(blocks) {
  const cell = el("td", { class: "blocks" });
  for (const b of blocks) {
    const until = b.until_ts ? ` (until ${utc(b.until_ts)}Z)` : "";
    cell.append(el("div", { class: "block", "data-gate": b.gate }, el("b", {}, b.gate), `: ${b.reason}${until}`));
  }
  return cell;
}

function botBlocksCell(bot, board) {
  const cell = blocksCell(bot.blocks);
  if (bot.stale) {
    cell.prepend(el("div", { class: "block", "data-gate": "stale" }, el("b", {}, "stale"),
      `: no heartbeat from its worker within ${board.staleness_ms / 1000} s — blocked`));
  }
  return cell;
}

function sparkline(points, width, height) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "spark");
  if (!points.length) return svg;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]).concat([0]);
  const x0 = xs[0], x1 = Math.max(xs[xs.length - 1], x0 + 1);
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const sx = (x) => ((x - x0) / (x1 - x0)) * (width - 2) + 1;
  const sy = (y) => height - 1 - ((y - y0) / (y1 - y0)) * (height - 2);
  const zero = document.createElementNS(ns, "line");
  zero.setAttribute("x1", 0); zero.setAttribute("x2", width);
  zero.setAttribute("y1", sy(0)); zero.setAttribute("y2", sy(0));
  zero.setAttribute("class", "zero");
  const line = document.createElementNS(ns, "polyline");
  const pts = points.length === 1 ? [points[0], [x1, points[0][1]]] : points;
  line.setAttribute("points", pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "));
  line.setAttribute("class", points[points.length - 1][1] < 0 ? "neg" : "pos");
  svg.append(zero, line);
  return svg;
}

// -- the gates table -------------------------------------------------------------------

const stateRank = { killed: 0, halted: 1, reducing: 2, active: 3 };

function rowsOf(board) {
  const rows = [];
  for (const bot of board.bots) {
    rows.push({ kind: "bot", bot, key: `${bot.bot}/*`, name: bot.bot, symbol: null, state: bot.state,
      pnl: bot.account_net_pnl ?? 0, trades: bot.symbols.reduce((n, s) => n + s.trades, 0),
      losses: bot.symbols.reduce((n, s) => n + s.recent_losses, 0) });
    for (const s of bot.symbols) {
      rows.push({ kind: "symbol", bot, sym: s, key: `${bot.bot}/${s.symbol}`, name: bot.bot,
        symbol: s.symbol, state: s.state, pnl: s.net_pnl, trades: s.trades, losses: s.recent_losses });
    }
  }
  return rows;
}

function visible(row) {
  const text = $("filter").value.trim().toLowerCase();
  if (text && !`${row.name} ${row.symbol || ""}`.toLowerCase().includes(text)) return false;
  const state = $("state-filter").value;
  if (state === "blocked") return row.state !== "active";
  return !state || row.state === state;
}

function sorted(rows) {
  const by = $("sort").value;
  const groups = new Map();
  for (const row of rows) {
    if (!groups.has(row.name)) groups.set(row.name, []);
    groups.get(row.name).push(row);
  }
  const cmp = {
    name: (a, b) => (a.symbol || "").localeCompare(b.symbol || ""),
    state: (a, b) => stateRank[a.state] - stateRank[b.state],
    pnl: (a, b) => a.pnl - b.pnl,
    trades: (a, b) => b.trades - a.trades,
    losses: (a, b) => b.losses - a.losses,
  }[by];
  const ordered = [...groups.values()].sort((a, b) => cmp(a[0], b[0]) || a[0].name.localeCompare(b[0].name));
  // A bot's row stays first in its group; its symbols are ordered by the same key.
  return ordered.flatMap((g) => [g[0], ...g.slice(1).sort((a, b) => cmp(a, b) || a.symbol.localeCompare(b.symbol))]);
}

function actButton(bot, symbol) {
  if (!view.me || !view.me.actions.length) return "";
  return el("button", { type: "button", class: "act", "data-act": `${bot}/${symbol || "*"}`,
    onclick: () => openAction(bot, symbol) }, "act…");
}

function renderTable(board) {
  const body = $("rows");
  const rows = sorted(rowsOf(board).filter(visible));
  body.replaceChildren(...rows.map((row) => {
    const bot = row.bot;
    if (row.kind === "bot") {
      return el("tr", { class: `bot ${bot.state}`, "data-key": row.key, "data-state": bot.state },
        el("td", {}, el("a", { href: "#", class: "bot-link", onclick: (e) => { e.preventDefault(); openDetail(bot.bot); } }, bot.bot)),
        el("td", { class: "muted" }, "(bot)"),
        el("td", { class: "state" }, bot.state),
        botBlocksCell(bot, board),
        el("td", { class: "num" }, money(bot.account_net_pnl)),
        el("td", { class: "num" }, money(bot.unrealised_pnl)),
        el("td", { class: "num" }, row.trades),
        el("td", { class: "num" }, row.losses),
        el("td", { class: "num" }, ""),
        el("td", { class: "num" }, bot.open_positions === null ? "–" : `${bot.open_positions} / ${money(bot.gross_exposure)}`),
        el("td", {}, sparkline(bot.pnl, 120, 22)),
        el("td", {}, actButton(bot.bot, null)));
    }
    const s = row.sym;
    return el("tr", { class: `symbol ${s.state}`, "data-key": row.key, "data-state": s.state },
      el("td", { class: "muted" }, bot.bot),
      el("td", {}, s.symbol),
      el("td", { class: "state" }, s.state),
      blocksCell(s.blocks),
      el("td", { class: `num ${s.net_pnl < 0 ? "neg" : ""}` }, money(s.net_pnl)),
      el("td", { class: "num" }, money(s.unrealised_pnl)),
      el("td", { class: "num" }, s.trades),
      el("td", { class: "num" }, s.recent_losses),
      el("td", { class: "num" }, qty(s.position_qty)),
      el("td", {}, ""), el("td", {}, ""),
      el("td", {}, actButton(bot.bot, s.symbol)));
  }));
  const c = board.counts;
  $("counts").textContent = `${c.bots} bots · ${c.symbols} symbols · blocked: ${c.blocked_bots} bots, ${c.blocked_symbols} symbols · stale: ${c.stale_bots}`;
  const banner = $("banner");
  banner.hidden = board.caught_up && !board.failure;
  banner.textContent = board.failure ? `reader stopped: ${board.failure} — everything shows blocked`
    : "reading the gates topic… everything shows blocked until it is caught up";
}

// -- the timeline ------------------------------------------------------------------------

function fillSelect(select, values) {
  const current = select.value;
  const wanted = ["", ...[...new Set(values)].sort()];
  if (select.options.length === wanted.length && [...select.options].every((o, i) => o.value === wanted[i])) return;
  select.replaceChildren(...wanted.map((v) => el("option", { value: v }, v || "all")));
  select.value = wanted.includes(current) ? current : "";
}

function timelineRow(e) {
  return el("tr", { class: e.kind, "data-event": e.event_id },
    el("td", {}, utcDate(e.ts)), el("td", { class: "kind" }, e.kind), el("td", {}, e.bot),
    el("td", {}, e.symbol || "*"), el("td", {}, e.gate), el("td", {}, e.reason),
    el("td", {}, e.until_ts ? `${utc(e.until_ts)}Z` : ""), el("td", {}, e.issued_by || ""));
}

function renderTimeline(board) {
  const events = board.timeline;
  fillSelect($("tl-bot"), events.map((e) => e.bot));
  fillSelect($("tl-symbol"), events.map((e) => e.symbol || "*"));
  fillSelect($("tl-gate"), events.map((e) => e.gate));
  const [bot, symbol, gate] = ["tl-bot", "tl-symbol", "tl-gate"].map((id) => $(id).value);
  const shown = events.filter((e) => (!bot || e.bot === bot) && (!symbol || (e.symbol || "*") === symbol) && (!gate || e.gate === gate));
  $("tl-rows").replaceChildren(...shown.slice(0, 500).map(timelineRow));
}

// -- the bot detail view -------------------------------------------------------------------

function openDetail(bot) { view.detail = bot; renderDetail(view.board); }

function renderDetail(board) {
  const section = $("detail");
  const bot = board && board.bots.find((b) => b.bot === view.detail);
  section.hidden = !bot;
  if (!bot) return;
  $("detail-title").textContent = `${bot.bot} — ${bot.state}${bot.stale ? " (stale: blocked)" : ""}`;
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...["symbol", "state", "blocks (until)", "net PnL", "unrealised", "trades", "losses in window", "position"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...bot.symbols.map((s) => el("tr", { class: s.state }, el("td", {}, s.symbol), el("td", {}, s.state), blocksCell(s.blocks),
      el("td", { class: "num" }, money(s.net_pnl)), el("td", { class: "num" }, money(s.unrealised_pnl)), el("td", { class: "num" }, s.trades), el("td", { class: "num" }, s.recent_losses), el("td", { class: "num" }, qty(s.position_qty))))));
  const events = board.timeline.filter((e) => e.bot === bot.bot).slice(0, 50);
  $("detail-body").replaceChildren(
    el("p", {}, `account net PnL ${money(bot.account_net_pnl)} · unrealised ${money(bot.unrealised_pnl)} · equity ${money(bot.equity)} · open positions ${bot.open_positions ?? "–"} · gross exposure ${money(bot.gross_exposure)}${bot.pnl.length ? ` · PnL last changed ${utcDate(bot.pnl[bot.pnl.length - 1][0])}` : ""}`),
    el("div", { class: "bot-blocks" }, ...bot.blocks.map((b) => el("div", {}, el("b", {}, b.gate), `: ${b.reason}${b.until_ts ? ` (until ${utc(b.until_ts)}Z)` : ""}`))),
    sparkline(bot.pnl, 480, 80), table,
    el("h3", {}, "recent events"),
    el("table", {}, el("tbody", {}, ...events.map(timelineRow))),
    actButton(bot.bot, null) || "");
}

// -- actions ---------------------------------------------------------------------------------

function openAction(bot, symbol) {
  $("act-action").replaceChildren(...view.me.actions.map((a) => el("option", { value: a }, a)));
  $("act-bot").value = bot;
  $("act-symbol").value = symbol || "";
  $("act-reason").value = "";
  $("act").showModal();
}

function toast(text, kind) {
  const box = $("toast");
  box.textContent = text;
  box.className = kind || "";
  box.hidden = false;
}

async function submitAction(event) {
  event.preventDefault();
  const body = { action: $("act-action").value, bot: $("act-bot").value,
    symbol: $("act-symbol").value.trim() || null, reason: $("act-reason").value };
  $("act").close();
  const response = await fetch("/api/actions", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": view.me.csrf }, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) { toast(`refused: ${answer.error}`, "error"); return; }
  view.pending.set(answer.event_id, `${answer.action} ${answer.bot}/${answer.symbol || "*"}`);
  toast(`${answer.action} ${answer.bot}/${answer.symbol || "*"} sent — waiting for the worker's event`, "pending");
  checkPending(view.board);
}

function checkPending(board) {
  if (!board) return;
  for (const [id, what] of view.pending) {
    const event = board.timeline.find((e) => e.event_id === id);
    if (event) {
      view.pending.delete(id);
      toast(`${what}: ${event.kind} (${event.gate}) — applied by the worker`, "ok");
    }
  }
}

// -- wiring ------------------------------------------------------------------------------------

function render() {
  const board = view.board;
  if (!board || !board.bots) return;
  renderTable(board);
  renderTimeline(board);
  renderDetail(board);
  checkPending(board);
}

function connect() {
  const source = new EventSource("/api/events");
  const live = () => {
    $("link").textContent = "live";
    $("link").className = "link up";
    document.body.classList.remove("offline");
  };
  source.addEventListener("rows", (e) => {
    view.board = { timeline: [], ...(view.board || {}), ...JSON.parse(e.data) };
    live();
    render();
  });
  source.addEventListener("timeline", (e) => {
    view.board = { ...(view.board || {}), timeline: JSON.parse(e.data) };
    live();
    render();
  });
  source.onerror = async () => {
    // Fail closed on the screen too: rows that no longer update must not look live.
    $("link").textContent = "connection lost — reconnecting…";
    $("link").className = "link down";
    document.body.classList.add("offline");
    const me = await fetch("/api/me", { credentials: "same-origin" }).catch(() => null);
    if (me && me.status === 401) location.reload(); // logged out: back to the login form
  };
}

async function start() {
  const response = await fetch("/api/me", { credentials: "same-origin" });
  if (response.status === 401) { location.reload(); return; }
  view.me = await response.json();
  $("who").textContent = `${view.me.user} (${view.me.role})`;
  for (const id of ["filter", "state-filter", "sort", "tl-bot", "tl-symbol", "tl-gate"]) {
    $(id).addEventListener("input", render);
    $(id).addEventListener("change", render);
  }
  $("detail-close").addEventListener("click", () => { view.detail = null; render(); });
  $("act-form").addEventListener("submit", submitAction);
  $("act-cancel").addEventListener("click", () => $("act").close());
  $("logout").addEventListener("submit", async (e) => {
    e.preventDefault();
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": view.me.csrf } });
    location.href = "/";
  });
  connect();
}

start();
