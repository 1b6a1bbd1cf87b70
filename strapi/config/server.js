module.exports = ({ env }) => ({
  host: env('HOST', '0.0.0.0'),
  port: env.int('PORT', 1337),
  app: {
    keys: env.array('APP_KEYS'),
  },
  // Static files and local uploads. run.sh points PUBLIC_DIR at a directory of
  // its own per instance when the tests ask for it, so that parallel Strapi
  // processes never write into this project.
  dirs: {
    public: env('PUBLIC_DIR', './public'),
  },
  webhooks: {
    populateRelations: env.bool('WEBHOOKS_POPULATE_RELATIONS', false),
  },
  logger: {
    // The update check asks the internet at every start.
    updates: { enabled: env.bool('STRAPI_UPDATE_CHECK', false) },
  },
});
