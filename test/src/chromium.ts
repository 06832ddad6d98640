import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

/** Debian's Chromium (playwright's own browser download cannot work offline); CHROMIUM_PATH overrides it. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/**
 * Headless Chromium in a fresh profile, with the flags this machine needs (no background networking: its connections
 * are refused here). `cleanups` receives the profile's removal. CI installs chromium: a missing browser is a failure
 * to fix, never a silent skip.
 */
export async function launchChromium(cleanups: (() => unknown)[], viewport = { width: 1280, height: 1000 }): Promise<BrowserContext> {
  assert.ok(existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  const profile = mkdtempSync(join(tmpdir(), 'fedunlearn-chromium-'));
  cleanups.push(() => rmSync(profile, { recursive: true, force: true }));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
