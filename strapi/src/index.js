'use strict';

// The name of the API token that STRAPI_TOKEN provisions.
const TOKEN_NAME = 'opsci';

/**
 * Makes sure a full-access content-API token whose value is exactly
 * `accessKey` exists, so that `Authorization: Bearer $STRAPI_TOKEN` works.
 *
 * Strapi 5 keeps API tokens as `admin::api-token` rows holding an HMAC-SHA512
 * of the key salted with admin.apiToken.salt (API_TOKEN_SALT) and the key
 * encrypted with admin.secrets.encryptionKey (ENCRYPTION_KEY). The token
 * service only creates random keys, so the token is created through it and
 * its key then replaced. Idempotent: a restart with the same key and salt
 * finds the token by its hash and changes nothing; a new key or salt updates
 * the token of that name. The key itself is never logged.
 */
async function ensureApiToken(strapi, accessKey) {
  const tokens = strapi.service('admin::api-token-content-api');
  const query = strapi.db.query('admin::api-token');
  const accessKeyHash = tokens.hash(accessKey);
  const wanted = { type: 'full-access', lifespan: null, expiresAt: null };

  const existing = await query.findOne({ where: { accessKey: accessKeyHash } });
  if (existing && existing.type === 'full-access' && existing.expiresAt == null && existing.kind !== 'admin') {
    return;
  }

  let id = existing ? existing.id : undefined;
  if (id === undefined) {
    const named = await query.findOne({ where: { name: TOKEN_NAME } });
    id = named ? named.id : undefined;
  }
  if (id === undefined) {
    const created = await tokens.create({
      name: TOKEN_NAME,
      description: 'Full access for the OPSCI application (provisioned from STRAPI_TOKEN)',
      type: 'full-access',
      lifespan: null,
    });
    id = created.id;
  }
  const encryptedKey = strapi.service('admin::encryption').encrypt(accessKey);
  await query.update({
    where: { id },
    data: { ...wanted, kind: 'content-api', accessKey: accessKeyHash, encryptedKey },
  });
  strapi.log.info(`API token "${TOKEN_NAME}" provisioned from STRAPI_TOKEN (full access)`);
}

/**
 * Indexes the columns the app's event sync queries at each start
 * (`kafka_*`: the last event written per partition of the event topic;
 * `origin_*`: the last one per source partition of the topology's outputs),
 * so that finding where it stopped costs a few index lookups, however many
 * events Strapi holds. SQLite and PostgreSQL only (both know
 * `CREATE INDEX IF NOT EXISTS`); idempotent.
 */
async function indexEventPositions(strapi) {
  const client = strapi.db.dialect.client;
  if (client !== 'sqlite' && client !== 'postgres') {
    strapi.log.warn(`event position indexes not created on ${client}`);
    return;
  }
  const knex = strapi.db.connection;
  await knex.raw(
    'CREATE INDEX IF NOT EXISTS events_kafka_position ON events (kafka_topic, kafka_partition, kafka_offset)'
  );
  await knex.raw(
    'CREATE INDEX IF NOT EXISTS events_kafka_origin ON events ' +
      '(kafka_topic, kafka_partition, origin_topic, origin_partition, origin_offset, origin_rank)'
  );
}

module.exports = {
  register(/* { strapi } */) {},

  async bootstrap({ strapi }) {
    const accessKey = process.env.STRAPI_TOKEN;
    if (accessKey) {
      await ensureApiToken(strapi, accessKey);
    }
    await indexEventPositions(strapi);
  },
};
