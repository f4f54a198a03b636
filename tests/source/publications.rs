//! Spec: a publication of the user's own that would drop changes without a word is refused
//! before anything streams, naming the fix, and is never altered: one that leaves out an
//! operation, one with a row filter, one whose column list leaves out a column an event
//! field reads. Left as they are, once fixed as the hint says, the source starts.

use std::collections::HashMap;

use crate::support::{source_settings, unique, Stack};
use walcast::source::catalog::TableName;
use walcast::source::prepare;

#[tokio::test]
async fn a_publication_that_would_drop_changes_is_refused_naming_the_fix() {
    let stack = Stack::get();
    let name = unique("src_userpub");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, email text);
         ALTER TABLE users OWNER TO walcast; GRANT CREATE ON DATABASE {name} TO walcast;
         CREATE PUBLICATION mine FOR TABLE users WITH (publish = 'insert, update')"
    ))
    .await
    .unwrap();
    let mut settings = source_settings(stack, &name, &db, &["public.users"]);
    settings.publication = "mine".into();
    let users = TableName {
        schema: "public".into(),
        name: "users".into(),
    };
    settings.read_columns = Some(HashMap::from([(
        users,
        vec![
            "id".to_string(),
            "name".to_string(),
            "no_such_column".to_string(),
        ],
    )]));
    let refusal = |settings| async move {
        match prepare(settings).await {
            Ok(_) => panic!("publication mine was accepted"),
            Err(e) => {
                assert!(!e.is_transient(), "{e} must be permanent");
                e.to_string()
            }
        }
    };
    let as_it_is = || async {
        pg.query_one(
            "SELECT pubdelete, pubtruncate, (SELECT rowfilter FROM pg_publication_tables WHERE pubname = 'mine'), \
                    (SELECT attnames::text[] FROM pg_publication_tables WHERE pubname = 'mine') \
             FROM pg_publication WHERE pubname = 'mine'",
            &[],
        )
        .await
        .unwrap()
    };

    assert_eq!(
        refusal(&settings).await,
        format!("source {name}: publication mine does not publish deletes or truncates, so replicas would never see them\n  hint: run ALTER PUBLICATION \"mine\" SET (publish = 'insert, update, delete, truncate'), then restart (a table that should ignore truncates says skip_truncate = true)")
    );
    assert!(!as_it_is().await.get::<_, bool>(0), "never altered");
    pg.batch_execute(
        "ALTER PUBLICATION mine SET (publish = 'insert, update, delete, truncate');
         ALTER PUBLICATION mine SET TABLE users WHERE (id > 10)",
    )
    .await
    .unwrap();

    assert_eq!(
        refusal(&settings).await,
        format!("source {name}: publication mine sends only the rows of public.users matching WHERE (id > 10): changes of other rows never reach replicas, and an update moving a row out of the filter arrives as a delete\n  hint: run ALTER PUBLICATION \"mine\" SET TABLE \"public\".\"users\" (no WHERE, no column lists), or give the source a publication of its own, then restart")
    );
    assert_eq!(
        as_it_is().await.get::<_, Option<String>>(2).as_deref(),
        Some("(id > 10)")
    );
    pg.batch_execute("ALTER PUBLICATION mine SET TABLE users (id, email)")
        .await
        .unwrap();

    assert_eq!(
        refusal(&settings).await,
        format!("source {name}: publication mine sends table public.users without column name (its column list leaves it out), which an event field reads: streamed events could not carry it\n  hint: run ALTER PUBLICATION \"mine\" SET TABLE \"public\".\"users\" (no column lists), or add name to the table's column list, then restart")
    );
    assert_eq!(as_it_is().await.get::<_, Vec<String>>(3), ["id", "email"]);
    // A column list with every column read is no obstacle.
    pg.batch_execute("ALTER PUBLICATION mine SET TABLE users (id, name)")
        .await
        .unwrap();
    prepare(&settings).await.unwrap();
}

#[tokio::test]
async fn a_publication_for_all_tables_with_others_is_refused_naming_a_fix_that_works() {
    let stack = Stack::get();
    let name = unique("src_allpub");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY); CREATE TABLE other (id bigint PRIMARY KEY);
         ALTER TABLE users OWNER TO walcast; GRANT CREATE ON DATABASE {name} TO walcast;
         CREATE PUBLICATION everything FOR ALL TABLES"
    ))
    .await
    .unwrap();
    let mut settings = source_settings(stack, &name, &db, &["public.users"]);
    settings.publication = "everything".into();
    let refusal = prepare(&settings).await.expect_err("refused").to_string();
    let options = if stack.pg_major >= 18 {
        "publish_via_partition_root = true, publish_generated_columns = stored"
    } else {
        "publish_via_partition_root = true"
    };
    assert_eq!(
        refusal,
        format!("source {name}: publication everything publishes [public.other, public.users], but the configuration lists [public.users]\n  hint: publication everything is FOR ALL TABLES; give the source a publication of its own (publication = \"…\" in its [[source]], which walcast creates), or run DROP PUBLICATION \"everything\"; CREATE PUBLICATION \"everything\" FOR TABLE \"public\".\"users\" WITH ({options})")
    );
    // The hint's second fix works.
    pg.batch_execute(&format!(
        "DROP PUBLICATION \"everything\"; CREATE PUBLICATION \"everything\" FOR TABLE \"public\".\"users\" WITH ({options})"
    ))
    .await
    .unwrap();
    prepare(&settings).await.unwrap();
}
