// Decodes blurhash placeholders (https://blurha.sh: a few cosine components in base 83)
// into a tiny PNG data: URL, shown blurred behind an image while it loads.

const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~';
/** Pixels per side of the decoded picture: it is stretched and blurry anyway. */
const SIDE = 32;

/** @type {Map<string, string | null>} */
const decoded = new Map();

/** @param {string} s */
function base83(s) {
  let value = 0;
  for (const ch of s) {
    const digit = DIGITS.indexOf(ch);
    if (digit < 0) throw new Error('not a blurhash');
    value = value * 83 + digit;
  }
  return value;
}

/** @param {number} v 0-255 */
function toLinear(v) {
  const x = v / 255;
  return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
}

/** @param {number} v linear 0-1 */
function toSrgb(v) {
  const x = Math.max(0, Math.min(1, v));
  return Math.round((x <= 0.0031308 ? x * 12.92 : 1.055 * x ** (1 / 2.4) - 0.055) * 255);
}

/** @param {number} v @param {number} exp */
function signPow(v, exp) {
  return Math.sign(v) * Math.abs(v) ** exp;
}

/**
 * RGBA pixels of a blurhash.
 * @param {string} hash
 * @param {number} width
 * @param {number} height
 */
export function decodeBlurhash(hash, width, height) {
  if (hash.length < 6) throw new Error('not a blurhash');
  const sizeFlag = base83(hash[0]);
  const nx = (sizeFlag % 9) + 1;
  const ny = Math.floor(sizeFlag / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) throw new Error('not a blurhash');
  const maxAc = (base83(hash[1]) + 1) / 166;
  /** @type {[number, number, number][]} */
  const colors = [];
  const dc = base83(hash.slice(2, 6));
  colors.push([toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]);
  for (let i = 1; i < nx * ny; i++) {
    const v = base83(hash.slice(4 + i * 2, 6 + i * 2));
    colors.push([
      signPow((Math.floor(v / 361) - 9) / 9, 2) * maxAc,
      signPow(((Math.floor(v / 19) % 19) - 9) / 9, 2) * maxAc,
      signPow(((v % 19) - 9) / 9, 2) * maxAc,
    ]);
  }
  const pixels = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let j = 0; j < ny; j++) {
        const cy = Math.cos((Math.PI * y * j) / height);
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / width) * cy;
          const c = colors[i + j * nx];
          r += c[0] * basis;
          g += c[1] * basis;
          b += c[2] * basis;
        }
      }
      const p = (y * width + x) * 4;
      pixels[p] = toSrgb(r);
      pixels[p + 1] = toSrgb(g);
      pixels[p + 2] = toSrgb(b);
      pixels[p + 3] = 255;
    }
  }
  return pixels;
}

/** The placeholder as a data: URL, or null if the hash does not decode. @param {string} hash */
export function blurhashUrl(hash) {
  const known = decoded.get(hash);
  if (known !== undefined) return known;
  let url = null;
  try {
    const canvas = document.createElement('canvas');
    canvas.width = SIDE;
    canvas.height = SIDE;
    const ctx = canvas.getContext('2d');
    if (ctx) {
      ctx.putImageData(new ImageData(decodeBlurhash(hash, SIDE, SIDE), SIDE, SIDE), 0, 0);
      url = canvas.toDataURL('image/png');
    }
  } catch {
    url = null;
  }
  if (decoded.size > 500) decoded.clear();
  decoded.set(hash, url);
  return url;
}
