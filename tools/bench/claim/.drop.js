const { MongoClient } = require('mongodb');
(async () => {
  const c = await MongoClient.connect('mongodb://127.0.0.1:27017');
  for (const n of process.argv.slice(2)) { await c.db(n).dropDatabase(); console.log('dropped', n); }
  await c.close();
})();
