// The daemon's HTTP API as the page uses it: the session cookie signs
// requests in, and every request that changes something carries the CSRF
// header the daemon requires of cookie-authenticated calls.

const BASE = '/api/v1';
const CSRF = { 'x-microfactory-csrf': '1' };

/** An error the daemon (or the network) gave, with a message for people. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

/** Called when a request finds the session gone (daemon forgot it). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

function errorFrom(status, statusText, text) {
  try {
    const body = JSON.parse(text);
    if (body?.error?.message) return new ApiError(status, body.error.code, body.error.message);
  } catch {
    // not JSON: fall through to a generic message
  }
  return new ApiError(status, 'http', `The daemon answered ${status} ${statusText || ''}`.trim() + '.');
}

/** JSON request; resolves to the parsed body (null for 204). */
export async function api(method, path, body) {
  return (await request(method, path, body)).body;
}

/** A GET's parsed body with one of its answer's headers (null if absent). */
export async function apiWithHeader(path, header) {
  const { body, headers } = await request('GET', path);
  return { body, value: headers.get(header) };
}

async function request(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET') Object.assign(init.headers, CSRF);
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(BASE + path, init);
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the daemon. Check the connection and try again.');
  }
  const text = await res.text();
  if (!res.ok) {
    const err = errorFrom(res.status, res.statusText, text);
    if (res.status === 401 && path !== '/session') onUnauthorized(err);
    throw err;
  }
  if (!text) return { body: null, headers: res.headers };
  try {
    return { body: JSON.parse(text), headers: res.headers };
  } catch {
    throw new ApiError(res.status, 'bad_json', 'The daemon sent an answer this page cannot read.');
  }
}

/** Uploads a file as multipart field `file`, reporting progress 0..1.
 *  XMLHttpRequest because fetch cannot report upload progress. */
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', BASE + '/files');
    xhr.setRequestHeader('x-microfactory-csrf', '1');
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch {
          reject(new ApiError(xhr.status, 'bad_json', 'The daemon sent an answer this page cannot read.'));
        }
      } else {
        const err = errorFrom(xhr.status, xhr.statusText, xhr.responseText);
        if (xhr.status === 401) onUnauthorized(err);
        reject(err);
      }
    });
    xhr.addEventListener('error', () =>
      reject(new ApiError(0, 'network', 'The upload was cut off: cannot reach the daemon.')));
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
}
