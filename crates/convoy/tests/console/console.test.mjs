// The web console in a real headless Chromium (Debian's, through
// playwright-core). Run by crates/convoy/tests/console.rs, which starts the
// server and agents and passes what it made in CONVOY_CONSOLE_TEST (JSON).
// Exits 0 when every step passed; screenshots go to the `shots` directory.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const t = JSON.parse(process.env.CONVOY_CONSOLE_TEST);
const base = t.url;
mkdirSync(t.shots, { recursive: true });
const step = (name) => console.log(`step: ${name}`);
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}
const deadline = (s) => ({ timeout: s * 1000 });

const browser = await chromium.launch({
  executablePath: t.chromium,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const shot = async (page, name) => page.screenshot({ path: `${t.shots}/${name}.png`, fullPage: true });

async function signIn(ctx, token) {
  const page = await ctx.newPage();
  await page.goto(`${base}/ui/`);
  check(page.url().endsWith("/ui/login"), "an anonymous visit is sent to sign in");
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${base}/ui/`);
  return page;
}

try {
  // ---------------------------------------------------------------- sign-in
  step("a wrong token is refused");
  const anon = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const login = await anon.newPage();
  await login.goto(`${base}/ui/login`);
  await shot(login, "01-login");
  await login.getByLabel("API token").fill("not-a-token-of-anyone-0000");
  await login.getByRole("button", { name: "Sign in" }).click();
  await login.locator("#login-error").waitFor(deadline(10));
  check((await login.locator("#login-error").textContent()).includes("unknown or revoked"), "the reason is shown");
  await anon.close();

  step("the approver signs in; the session cookie is HttpOnly and SameSite");
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await signIn(ctx, t.approver);
  const cookie = (await ctx.cookies()).find((c) => c.name === "convoy_session");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", "HttpOnly, SameSite=Strict session cookie");
  check(!(await page.evaluate(() => document.cookie)).includes("convoy_session"), "scripts cannot read the session");
  await shot(page, "02-deployments");

  // ---------------------------------------------------------------- approve
  step("the request waits in the approvals inbox; approve it with a note");
  await page.getByRole("link", { name: "Approvals" }).click();
  await page.getByRole("heading", { name: new RegExp(t.request) }).waitFor(deadline(10));
  await shot(page, "03-approvals");
  await page.getByLabel("Note for Approve").fill("looks right, CHG-7 checked");
  await page.getByRole("button", { name: `Approve ${t.request}` }).click();
  await page.waitForURL(new RegExp(`/ui/deployments/${t.request}\\?done=`));
  check((await page.locator(".flash").textContent()).includes("approve"), "the page says it was approved");

  // ---------------------------------------------------------------- pause, resume, watch it go live
  step("while it waits for go-live: pause it, with a reason and a confirmation");
  await page.locator("#live .counts[data-state='scheduled']").waitFor(deadline(60));
  await page.getByText("Pause…").click();
  await page.getByLabel("Reason (kept in the audit log)").first().fill("hold for the release call");
  await page.getByLabel(/I confirm: Pause/).check();
  await page.getByRole("button", { name: "Pause", exact: true }).click();
  await page.waitForURL(/done=pause/);
  check((await page.locator("dl.facts").textContent()).includes("Paused by"), "it shows who paused it");
  await shot(page, "04-paused");

  step("resume it, then watch it go live without reloading");
  await page.getByText("Resume…").click();
  await page.getByLabel("Reason (kept in the audit log)").first().fill("release call done");
  await page.getByLabel(/I confirm: Resume/).check();
  await page.getByRole("button", { name: "Resume", exact: true }).click();
  await page.waitForURL(/done=resume/);
  await page.evaluate(() => { window.__stillHere = true; });
  await page.locator("#live[data-updated]").waitFor(deadline(90));
  await page.locator("#live .counts[data-state='succeeded']").waitFor(deadline(90));
  check(await page.evaluate(() => window.__stillHere === true), "the page updated itself (no reload)");
  check((await page.locator("#live").textContent()).includes("✓ matches"), "the digest check is shown");
  await page.locator("#plot-progress").waitFor(deadline(10));
  check((await page.locator("#plot-progress svg desc").textContent()).includes("live"), "the progress plot describes itself");
  await shot(page, "05-live");

  // ---------------------------------------------------------------- failed output
  step("a failed target's output");
  await page.goto(`${base}/ui/deployments/${t.failed}`);
  const out = page.locator("details", { hasText: "Output of b" });
  await out.locator("summary").click();
  check((await out.locator("pre").textContent()).includes("service unavailable"), "the health hook's output is shown");
  check(await page.locator("#plot-health_ms").isVisible(), "the health-check time plot is drawn");
  await shot(page, "06-failed-output");

  // ---------------------------------------------------------------- the other pages
  step("fleet, a target, releases, changes, audit");
  await page.getByRole("link", { name: "Fleet" }).click();
  await page.getByLabel("Labels").fill("site=us");
  await page.getByRole("button", { name: "Filter" }).click();
  check((await page.locator("#fleet-count").textContent()).startsWith("1 of 2"), "the label filter picks one target");
  await shot(page, "07-fleet");
  await page.getByRole("link", { name: "b", exact: true }).click();
  await page.getByRole("heading", { name: "Deployments" }).waitFor(deadline(10));
  check((await page.locator("table").textContent()).includes("rolled back"), "the target's history");
  await shot(page, "08-target");
  await page.getByRole("link", { name: "Releases" }).click();
  check((await page.locator("main").textContent()).includes("signed (targets)"), "signatures are shown");
  check((await page.locator("main").textContent()).includes("on main"), "provenance is shown");
  await shot(page, "09-releases");
  await page.getByRole("link", { name: "web@2.0" }).first().click();
  await page.getByLabel("Compare with").selectOption("1.0");
  await page.getByRole("button", { name: "Show changes" }).click();
  await page.getByRole("heading", { name: "Changes from 1.0" }).waitFor(deadline(10));
  await shot(page, "10-changes");
  await page.getByRole("link", { name: "Audit log" }).click();
  await page.getByLabel("Actor").fill(t.approver_name);
  await page.getByRole("button", { name: "Filter" }).click();
  const audit = await page.locator("table").textContent();
  check(audit.includes("hold for the release call") && audit.includes("looks right"), "the audit log has the reasons");
  await shot(page, "11-audit");

  // ---------------------------------------------------------------- CSRF
  step("a state change without the CSRF token is refused");
  const noCsrf = await page.request.post(`${base}/ui/deployments/${t.request}/act`, {
    form: { action: "rollback", reason: "x", confirm: "yes" },
    maxRedirects: 0,
  });
  check(noCsrf.status() === 403, `no CSRF token: ${noCsrf.status()}`);
  const wrongCsrf = await page.request.post(`${base}/ui/deployments/${t.request}/act`, {
    form: { action: "rollback", reason: "x", confirm: "yes", csrf: "0".repeat(64) },
    maxRedirects: 0,
  });
  check(wrongCsrf.status() === 403, `a wrong CSRF token: ${wrongCsrf.status()}`);
  const other = await page.request.post(`${base}/ui/logout`, { form: {}, maxRedirects: 0 });
  check(other.status() === 403, "sign-out needs the token too");

  step("sign out");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${base}/ui/login`);
  await page.goto(`${base}/ui/approvals`);
  check(page.url().endsWith("/ui/login"), "signed out: the console asks to sign in again");
  await ctx.close();

  // ---------------------------------------------------------------- viewer, narrow screen
  step("a viewer sees no action buttons, and the server refuses one anyway");
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const vp = await signIn(phone, t.viewer);
  await vp.goto(`${base}/ui/deployments/${t.request}`);
  await vp.locator("#no-actions").waitFor(deadline(10));
  check((await vp.locator("form[action$='/act']").count()) === 0, "no action forms");
  const width = await vp.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `readable at 390 px without sideways scrolling of the page (${width})`);
  await shot(vp, "12-viewer-390");
  await vp.screenshot({ path: `${t.shots}/13-viewer-390-screen.png` });
  const csrf = await vp.locator("input[name=csrf]").first().inputValue();
  const forged = await vp.request.post(`${base}/ui/deployments/${t.request}/act`, {
    form: { action: "rollback", reason: "x", confirm: "yes", csrf },
    maxRedirects: 0,
  });
  check(forged.status() === 403, `a viewer's action is refused: ${forged.status()}`);

  step("keyboard: the skip link leads to the content");
  await vp.keyboard.press("Tab");
  check((await vp.evaluate(() => document.activeElement.className)) === "skip", "the first Tab reaches the skip link");
  await phone.close();
  console.log("console test: every step passed");
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
  for (const c of browser.contexts()) {
    for (const [i, p] of c.pages().entries()) {
      await p.screenshot({ path: `${t.shots}/failure-${i}.png`, fullPage: true }).catch(() => {});
      console.error(`failure-${i}.png: ${p.url()}`);
    }
  }
} finally {
  await browser.close();
}
