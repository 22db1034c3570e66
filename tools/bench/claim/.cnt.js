const { MongoClient } = require('mongodb');
(async () => {
  const c = await MongoClient.connect('mongodb://127.0.0.1:27017');
  const dbs = await c.db('admin').admin().listDatabases();
  for (const d of dbs.databases.filter(d => d.name.startsWith('t_db_claim'))) {
    const col = c.db(d.name).collection('trainingJobs');
    console.log(d.name, await col.countDocuments({status: 'QUEUED'}), await col.countDocuments({}), await c.db(d.name).collection('trainingJobClaims').countDocuments({}));
  }
  await c.close();
})();
