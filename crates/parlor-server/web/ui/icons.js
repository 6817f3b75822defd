// Inline SVG icons (24px grid, stroked with currentColor), drawn for this project.

const PATHS = {
  send: 'M4 12 20 4l-4 16-4-7-8-1Zm8 1 8-9',
  back: 'M15 5 8 12l7 7',
  plus: 'M12 5v14M5 12h14',
  search: 'M11 18a7 7 0 1 1 0-14 7 7 0 0 1 0 14Zm5-2 4 4',
  close: 'M6 6l12 12M18 6 6 18',
  users: 'M9 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8Zm-6 9c0-3.3 2.7-6 6-6s6 2.7 6 6m1-16a4 4 0 0 1 0 8m2 3c2.4.6 4 2.8 4 5',
  user: 'M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8Zm-7 8c0-3.9 3.1-7 7-7s7 3.1 7 7',
  info: 'M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18Zm0-10v6m0-9.5v.5',
  reply: 'M10 8 5 12l5 4M5 12h9c3 0 5 2 5 5v1',
  edit: 'M4 20h4L19 9l-4-4L4 16v4Zm9-13 4 4',
  trash: 'M4 7h16M10 11v6m4-6v6M6 7l1 13h10l1-13M9 7V4h6v3',
  more: 'M6 12h.01M12 12h.01M18 12h.01',
  check: 'M5 13l4 4L19 7',
  checks: 'M2 13l4 4L16 7m-4 8 2 2 8-10',
  clock: 'M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18Zm0-13v4l3 2',
  alert: 'M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18Zm0-13v5m0 3v.5',
  logout: 'M15 4h4v16h-4M10 8l-4 4 4 4M6 12h10',
  chat: 'M4 5h16v11H9l-5 4V5Z',
  down: 'M12 5v14m-6-6 6 6 6-6',
  paperclip: 'M20 11.5 12.2 19.3a5 5 0 0 1-7.1-7.1l8.1-8.1a3.4 3.4 0 0 1 4.8 4.8l-8 8a1.8 1.8 0 0 1-2.6-2.6L14.8 7',
  file: 'M14 3H6v18h12V7l-4-4Zm0 0v4h4M9 13h6m-6 4h6',
  download: 'M12 4v11m-5-5 5 5 5-5M5 20h14',
  play: 'M8 5.5v13l10.5-6.5L8 5.5Z',
  image: 'M4 5h16v14H4V5Zm0 11 5-5 4 4 2-2 5 5m-5-8.5h.01',
  bell: 'M18 16v-5a6 6 0 0 0-12 0v5l-2 2h16l-2-2Zm-8 5h4',
  bellOff: 'M8.5 5.1A6 6 0 0 1 18 10v5m-1 3H4l2-2v-5c0-1 .2-1.9.6-2.7M10 21h4M3 3l18 18',
  sliders: 'M4 7h9m4 0h3M4 17h3m4 0h9M15 5v4m-6 6v4',
  wifiOff: 'M3 3l18 18M8.5 16.5a5 5 0 0 1 7 0M5 12.5a10 10 0 0 1 4-2.4m6 0a10 10 0 0 1 4 2.4M12 20h.01',
};

/** @typedef {keyof typeof PATHS} IconName */

/** @param {IconName} name @param {string} [cls] @returns {SVGSVGElement} */
export function icon(name, cls = 'icon') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', cls);
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', PATHS[name]);
  svg.appendChild(path);
  return svg;
}
