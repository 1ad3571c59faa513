// Flowise's own PostgreSQL migrations (the list its DataSource runs), applied to DATABASE_URL.
// FLOWISE_DIST: an installed Flowise's dist directory. Used by tests/integration/test_flowise_schema.py.
const dist = process.env.FLOWISE_DIST
const { DataSource } = require(require.resolve('typeorm', { paths: [dist] }))
const { postgresMigrations } = require(dist + '/database/migrations/postgres')
const { entities } = require(dist + '/database/entities')
const source = new DataSource({
    type: 'postgres', url: process.env.DATABASE_URL, migrations: postgresMigrations,
    entities: Object.values(entities), synchronize: false, migrationsRun: false, logging: false
})
source.initialize()
    .then(() => source.runMigrations({ transaction: 'each' }))
    .then((done) => { console.log(`applied ${done.length} migrations`); return source.destroy() })
    .catch((error) => { console.error(error.message); process.exit(1) })
