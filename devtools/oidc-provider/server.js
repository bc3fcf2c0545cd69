// Local, real OpenID Connect provider for Dromos end-to-end tests and the
// `make run` demo. Built on panva's certified `oidc-provider` (9.x).
//
// Everything is in memory: restarting the process forgets every session,
// grant and token. Configuration comes from the environment; see README.md.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import * as querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

function fail(message) {
  console.error(`oidc-provider: ${message}`);
  process.exit(2);
}

function intFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function jsonFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  try {
    return JSON.parse(raw);
  } catch (err) {
    return fail(`${name} is not valid JSON: ${err.message}`);
  }
}

const PORT = intFromEnv('PORT', 9400);
if (PORT < 1 || PORT > 65535) fail(`PORT must be between 1 and 65535, got ${PORT}`);
const HOST = '127.0.0.1';
const ISSUER = `http://${HOST}:${PORT}`;
const ACCESS_TOKEN_TTL = intFromEnv('ACCESS_TOKEN_TTL', 3600);
if (ACCESS_TOKEN_TTL < 1) fail('ACCESS_TOKEN_TTL must be at least 1 second');
// The in-memory store is an LRU of 1000 entries by default: past a few hundred grants it
// forgets the oldest (their refresh tokens then answer invalid_grant). Soaks raise it.
const STORE_SIZE = intFromEnv('OIDC_STORE_SIZE', 0);
// Client credentials (RFC 6749 §4.4): token lifetime, and the one resource server (RFC 8707)
// a client may name with its scopes.
const CLIENT_CREDENTIALS_TTL = intFromEnv('CLIENT_CREDENTIALS_TTL', 600);
const RESOURCE_SERVER = process.env.RESOURCE_SERVER || 'urn:dromos:api';
const RESOURCE_SCOPES = process.env.RESOURCE_SCOPES || 'api:read api:write';
// RFC 8628 test switches, both off (0) by default; see the device flow middleware below.
// DEVICE_SLOW_DOWN_POLLS=N: the first N token requests of each device code answer slow_down.
// DEVICE_POLL_INTERVAL=S: the device authorization response carries `interval` S (oidc-provider
// sends none, so clients use RFC 8628's default of 5 s).
const DEVICE_SLOW_DOWN_POLLS = intFromEnv('DEVICE_SLOW_DOWN_POLLS', 0);
const DEVICE_POLL_INTERVAL = intFromEnv('DEVICE_POLL_INTERVAL', 0);

const DEFAULT_CLIENTS = [{
  client_id: 'dromos-demo',
  client_secret: 'dromos-demo-secret',
  redirect_uris: ['http://127.0.0.1:8001/auth/callback'],
}];

function normalizeClient(client, index) {
  if (!client || typeof client !== 'object' || Array.isArray(client)) {
    fail(`OIDC_CLIENTS_JSON[${index}] must be an object`);
  }
  if (!client.client_id) fail(`OIDC_CLIENTS_JSON[${index}] has no client_id`);
  // A machine-only client (grant_types without authorization_code, e.g. ["client_credentials"])
  // has no redirect URIs and no response types.
  const machineOnly = Array.isArray(client.grant_types) && !client.grant_types.includes('authorization_code');
  if (machineOnly) {
    return {
      token_endpoint_auth_method: 'client_secret_basic', redirect_uris: [], response_types: [], ...client,
    };
  }
  if (!Array.isArray(client.redirect_uris) || client.redirect_uris.length === 0) {
    fail(`OIDC_CLIENTS_JSON[${index}] (${client.client_id}) needs a non-empty redirect_uris array`);
  }
  return {
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...client,
  };
}

const rawClients = jsonFromEnv('OIDC_CLIENTS_JSON', DEFAULT_CLIENTS);
if (!Array.isArray(rawClients)) fail('OIDC_CLIENTS_JSON must be a JSON array of client objects');
const clients = rawClients.map(normalizeClient);

function signingKeys() {
  const fromEnv = jsonFromEnv('JWKS_JSON', undefined);
  if (fromEnv !== undefined) {
    if (!fromEnv || !Array.isArray(fromEnv.keys) || fromEnv.keys.length === 0) {
      fail('JWKS_JSON must be a private JWK Set: {"keys": [...]} with at least one RSA key');
    }
    return fromEnv;
  }
  // A fresh RS256 key per process: tokens from an earlier run never verify.
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    keys: [{
      ...jwk, kid: `dromos-dev-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256',
    }],
  };
}

// Any login name is accepted (devInteractions has no password check); the
// account's `sub` is exactly the login name typed on the login page.
async function findAccount(_ctx, id) {
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: id.includes('@') ? id : `${id}@example.test`,
        email_verified: true,
        name: id.charAt(0).toUpperCase() + id.slice(1),
      };
    },
  };
}

const configuration = {
  clients,
  jwks: signingKeys(),
  findAccount,
  // Authorization code flow only (no implicit / hybrid).
  responseTypes: ['code'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Put the scope claims (email, name, ...) in the id_token as well, not
  // only in the userinfo response.
  conformIdTokenClaims: false,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    // Built-in login and consent pages at /interaction/:uid; the consent
    // page grants every requested scope, its "[ Cancel ]" link answers the
    // client with error=access_denied.
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    // RFC 8628 device authorization grant: /device/auth for the client, /device for the
    // person (type the user code, confirm, then log in and consent as above). A client
    // uses it when its grant_types include urn:ietf:params:oauth:grant-type:device_code.
    deviceFlow: { enabled: true },
    // RFC 6749 §4.4 for clients whose grant_types include client_credentials.
    clientCredentials: { enabled: true },
    // RFC 8707: a client_credentials request naming `resource` RESOURCE_SERVER gets a JWT
    // access token for it (aud = that resource, scopes among RESOURCE_SCOPES); without
    // `resource` tokens stay opaque, as before.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE_SERVER) throw new errors.InvalidTarget();
        return {
          scope: RESOURCE_SCOPES,
          audience: RESOURCE_SERVER,
          accessTokenTTL: CLIENT_CREDENTIALS_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
    userinfo: { enabled: true },
    // The RFC 9207 `iss` authorization response parameter is always on in
    // oidc-provider 9.x (no feature flag any more); discovery advertises
    // authorization_response_iss_parameter_supported: true.
  },
  // PKCE is mandatory for every client (9.x only supports S256).
  pkce: { required: () => true },
  // A refresh token for every authorization_code grant of a client allowed
  // the refresh_token grant type, with or without offline_access.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Refresh tokens outlive the provider's login session.
  expiresWithSession: async () => false,
  // Every refresh rotates the refresh token; presenting a rotated (consumed)
  // one is answered with invalid_grant and revokes the whole grant.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    DeviceCode: intFromEnv('DEVICE_CODE_TTL', 600),
    ClientCredentials: CLIENT_CREDENTIALS_TTL,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 60 * 60,
    Grant: 14 * 24 * 60 * 60,
    Interaction: 60 * 60,
    Session: 14 * 24 * 60 * 60,
  },
};

if (STORE_SIZE) {
  // oidc-provider's own memory adapter over a store of that size (its default store is
  // created per provider with 1000 entries).
  const store = new LRU({ maxSize: STORE_SIZE });
  configuration.adapter = (model) => new MemoryAdapter(model, store);
}

const provider = new Provider(ISSUER, configuration);

// RFC 8628 §3.5 `slow_down`, on demand. oidc-provider defines the error (errors.SlowDown) but
// never raises it, so with DEVICE_SLOW_DOWN_POLLS=N the first N token requests
// (grant_type=urn:ietf:params:oauth:grant-type:device_code) of each existing, unexpired device
// code are answered here with 400 {"error": "slow_down", "error_description": ...}, whatever
// the user did meanwhile (the poll must name the client the code was issued to; its secret is
// not checked for these N answers); the request after them, and every other request, goes to
// oidc-provider unchanged. There is no rate check: a poll is not timed against the interval.
// Each device code poll is logged with the code's ordinal (never the code) and the time it
// arrived: `device poll 2 of device code #1 at 2026-…Z: slow_down`.
//
// Telling a device code poll from other token requests needs the body, and reading it here
// consumes the request stream before oidc-provider's own parser. That parser
// (lib/shared/selective_body.js) then takes the body from `req.body` instead; the raw body is
// handed over there exactly as that parser would have read it (a Buffer, or a string when the
// request names a charset), so it parses it the same way. It prints once "already parsed
// request body detected ..." on the first token request: expected while the switch is on.
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const BODY_LIMIT = 56 * 1024; // oidc-provider's own limit (selective_body.js)

async function readRawBody(req, length) {
  if (length !== undefined && length > BODY_LIMIT) throw new Error('request entity too large');
  const chunks = [];
  let received = 0;
  for await (const chunk of req.iterator({ destroyOnReturn: false })) {
    received += chunk.length;
    if (received > BODY_LIMIT) throw new Error('request entity too large');
    chunks.push(chunk);
  }
  if (length !== undefined && received !== length) throw new Error('request size did not match content length');
  return Buffer.concat(chunks, received);
}

// The client_id a token request names: client_secret_basic's user name or the body's client_id.
// (Only the id: the secret is checked by oidc-provider on every request passed on to it.)
function requestClientId(ctx, params) {
  const basic = /^basic\s+(\S+)$/i.exec(ctx.get('authorization'));
  if (!basic) return params.client_id;
  const user = Buffer.from(basic[1], 'base64').toString().split(':')[0];
  try {
    return decodeURIComponent(user.replace(/\+/g, ' '));
  } catch {
    return undefined;
  }
}

function deviceSlowDown(tokenPath) {
  const polls = new Map(); // device code -> { ordinal, count }
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || ctx.path !== tokenPath || !ctx.is('application/x-www-form-urlencoded')) {
      return next();
    }
    const at = new Date().toISOString();
    let body;
    try {
      const raw = await readRawBody(ctx.req, ctx.request.length);
      body = ctx.charset ? new TextDecoder(ctx.charset).decode(raw) : raw;
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'failed to parse the request body' };
      return undefined;
    }
    ctx.req.body = body;
    const params = querystring.parse(body.toString());
    const deviceCode = params.device_code;
    if (params.grant_type !== DEVICE_GRANT || typeof deviceCode !== 'string') return next();
    // Only a live device code presented by (the client_id of) the client it was issued to;
    // anything else is oidc-provider's to answer (invalid_grant, expired_token, invalid_client).
    const code = await provider.DeviceCode.find(deviceCode);
    if (!code || code.isExpired || code.clientId !== requestClientId(ctx, params)) return next();
    let seen = polls.get(deviceCode);
    if (!seen) {
      seen = { ordinal: polls.size + 1, count: 0 };
      polls.set(deviceCode, seen);
    }
    seen.count += 1;
    let outcome;
    if (seen.count <= DEVICE_SLOW_DOWN_POLLS) {
      const err = new errors.SlowDown();
      ctx.status = err.status;
      ctx.set('Cache-Control', 'no-store');
      ctx.body = { error: err.message, error_description: err.error_description };
      outcome = err.message;
    } else {
      await next();
      outcome = ctx.body?.error || (ctx.status === 200 ? 'tokens' : `status ${ctx.status}`);
    }
    console.log(`device poll ${seen.count} of device code #${seen.ordinal} at ${at}: ${outcome}`);
    return undefined;
  };
}

if (DEVICE_SLOW_DOWN_POLLS) provider.use(deviceSlowDown(provider.pathFor('token')));

if (DEVICE_POLL_INTERVAL) {
  const devicePath = provider.pathFor('device_authorization');
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method === 'POST' && ctx.path === devicePath && ctx.status === 200 && ctx.body?.device_code) {
      ctx.body.interval = DEVICE_POLL_INTERVAL;
    }
  });
}

provider.on('server_error', (_ctx, err) => {
  console.error('oidc-provider server_error:', err);
});

const server = provider.listen(PORT, HOST, () => {
  console.log(`oidc-provider listening on ${ISSUER}`);
});
server.on('error', (err) => fail(`cannot listen on ${HOST}:${PORT}: ${err.message}`));

function shutdown(signal) {
  console.log(`oidc-provider: ${signal} received, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
