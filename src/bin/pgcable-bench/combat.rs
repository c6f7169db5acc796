//! The `encounter` scenario's fight and its combat actions.
//!
//! [`Fight::create`] builds, in the bench campaign, a started fight of 40 combatants the way a
//! running Feng Shui 2 session looks: 30 characters (PCs, an Uber-Boss, Bosses, Allies, Featured
//! Foes and Mooks; three Mooks stand on three shots each, as mook groups do), each with a
//! faction, weapons (one carried twice), PCs and bosses with schticks, eight with effects; and 10
//! vehicles, six of them driven by characters (`shots.driver_id` / `driving_id`), one rammed,
//! one with a vehicle effect, in four active and two ended chase relationships. A vehicle's shot
//! has the vehicle's id: `chase_relationships.evader_id` references both `shots` and `vehicles`,
//! and the encounter matches chases to vehicles by vehicle id (schema.md, payloads.md §3.4).
//!
//! [`CombatWriter::fire`] makes one combat action in one transaction, as the Rails app's combat
//! action endpoint does: three shots move down the shot counter (shot value and count), one or two
//! characters take wounds, impairments or spend Fortune, and the fight records the action's
//! `action_id` (the echo marker the frontend recognises its own actions by; the bench encodes
//! the action's sequence number in it, see [`crate::worker::action_id`]).

use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::db::connect;
use crate::sys::now_ns;
use crate::worker::action_id;

/// Characters in the fight.
pub const CHARACTERS: usize = 30;
/// Vehicles in the fight.
pub const VEHICLES: usize = 10;

/// Character types in the fight, in the order the characters are made (30 in all).
const TYPES: [(&str, usize); 6] = [
    ("PC", 6),
    ("Uber-Boss", 1),
    ("Boss", 2),
    ("Ally", 4),
    ("Featured Foe", 7),
    ("Mook", 10),
];

const NAMES: [&str; 30] = [
    "Johnny Tso",
    "Mei Ling",
    "Big Ray Delgado",
    "Sister Agatha",
    "Kowalski",
    "Ravi Anand",
    "The Jade Emperor",
    "Madame Xiang",
    "General Drake",
    "Officer Park",
    "Old Man Liu",
    "Tasha Reyes",
    "Father Brennan",
    "Razor",
    "Cobra Lee",
    "Dr. Vance",
    "Snake Eyes",
    "The Butcher",
    "Lotus Blade",
    "Ironjaw",
    "Ninja A",
    "Ninja B",
    "Ninja C",
    "Thug",
    "Cultist",
    "Security Guard",
    "Hench Goon",
    "Triad Soldier",
    "Biker",
    "Street Punk",
];

const VEHICLE_NAMES: [&str; 10] = [
    "Black Sedan",
    "Police Cruiser",
    "Red Motorcycle",
    "Armored Van",
    "Taxi",
    "Pickup Truck",
    "Sports Car",
    "Delivery Truck",
    "Limousine",
    "Scooter",
];

/// What the fight is made of.
#[derive(Debug, Clone)]
pub struct Fight {
    /// The fight.
    pub id: Uuid,
    /// Its characters.
    pub characters: Vec<Uuid>,
    /// Shots of characters (the actions move these).
    pub character_shots: Vec<Uuid>,
    /// Shot rows in the fight (characters' and vehicles').
    pub shot_rows: usize,
    /// Character effects (vehicle effect included).
    pub effects: usize,
    /// Chase relationships, active and ended.
    pub chases: (usize, usize),
}

/// A small deterministic generator (the fight is the same in every run).
struct Pick(u64);

impl Pick {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> String {
    move |e| format!("fight: {what}: {e}")
}

impl Fight {
    /// Builds the started fight in `campaign` (owned by `user`), in one transaction.
    pub async fn create(url: &str, campaign: Uuid, user: Uuid) -> Result<Fight, String> {
        let mut client = connect(url).await?;
        let tx = client.transaction().await.map_err(err("begin"))?;
        let mut pick = Pick(0x2545_F491_4F6C_DD1D);

        let factions: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for (i, f) in factions.iter().enumerate() {
            let name = ["The Dragons", "The Ascended", "The Lotus"][i];
            tx.execute(
                "INSERT INTO factions (id, name, description, campaign_id, created_at, updated_at) \
                 VALUES ($1, $2, 'A faction of the bench campaign.', $3, now(), now())",
                &[f, &name, &campaign],
            )
            .await
            .map_err(err("factions"))?;
        }
        let weapons: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        for (i, w) in weapons.iter().enumerate() {
            let name = format!("Bench weapon {i}");
            let damage = 9 + (i as i32 % 5);
            tx.execute(
                "INSERT INTO weapons (id, campaign_id, name, description, damage, concealment, \
                                      reload_value, category, created_at, updated_at) \
                 VALUES ($1, $2, $3, 'A weapon.', $4, 2, 3, 'Guns', now(), now())",
                &[w, &campaign, &name, &damage],
            )
            .await
            .map_err(err("weapons"))?;
        }
        let schticks: Vec<Uuid> = (0..15).map(|_| Uuid::new_v4()).collect();
        for (i, s) in schticks.iter().enumerate() {
            let name = format!("Bench schtick {i}");
            tx.execute(
                "INSERT INTO schticks (id, campaign_id, name, description, category, path, \
                                       created_at, updated_at) \
                 VALUES ($1, $2, $3, 'Does a thing.', 'Guns', 'Core', now(), now())",
                &[s, &campaign, &name],
            )
            .await
            .map_err(err("schticks"))?;
        }

        // Characters.
        let mut characters = Vec::with_capacity(CHARACTERS);
        let mut types = Vec::with_capacity(CHARACTERS);
        for (t, count) in TYPES {
            for _ in 0..count {
                types.push(t);
            }
        }
        for (i, t) in types.iter().enumerate() {
            let id = Uuid::new_v4();
            let speed = 5 + pick.below(4) as i32;
            let wounds = if *t == "Mook" {
                0
            } else {
                pick.below(30) as i32
            };
            let av = serde_json::json!({
                "Type": t, "Guns": 12 + pick.below(4), "Martial Arts": 11 + pick.below(4),
                "Defense": 13 + pick.below(3), "Toughness": 6 + pick.below(3), "Speed": speed,
                "Fortune": 3 + pick.below(5), "Max Fortune": 7, "Wounds": wounds,
                "MainAttack": "Guns", "SecondaryAttack": "Martial Arts", "FortuneType": "Chi",
                "Archetype": "Killer", "Damage": 9, "Marks of Death": 0,
            });
            let status = if i % 9 == 4 {
                serde_json::json!(["up_check_required"])
            } else {
                serde_json::json!([])
            };
            let name = NAMES[i % NAMES.len()];
            let color = ["#c0392b", "#2980b9", "#27ae60", "#8e44ad"][i % 4];
            let impairments = (wounds >= 25) as i32 + (wounds >= 30) as i32;
            let faction = factions[i % factions.len()];
            tx.execute(
                "INSERT INTO characters (id, name, created_at, updated_at, campaign_id, user_id, \
                     impairments, color, faction_id, action_values, description, skills, status) \
                 VALUES ($1, $2, now(), now(), $3, $4, $5, $6, $7, $8, \
                     jsonb_build_object('Age', '35', 'Height', '180', 'Eye Color', 'brown', \
                         'Appearance', repeat('A long <b>description</b>. ', 6), \
                         'Background', repeat('Grew up on the docks. ', 5), \
                         'Melodramatic Hook', 'Revenge'), \
                     jsonb_build_object('Driving', 10 + $9::int, 'Intrusion', 12, 'Police', 8), $10)",
                &[
                    &id,
                    &name,
                    &campaign,
                    &user,
                    &impairments,
                    &color,
                    &faction,
                    &av,
                    &(i as i32 % 5),
                    &status,
                ],
            )
            .await
            .map_err(err("characters"))?;
            // Weapons: Mooks one, others one to three (one character carries a weapon twice).
            let carried = if *t == "Mook" { 1 } else { 1 + pick.below(3) };
            for k in 0..carried {
                let w = weapons[(i + 3 * k) % weapons.len()];
                tx.execute(
                    "INSERT INTO carries (id, character_id, weapon_id, created_at, updated_at) \
                     VALUES (gen_random_uuid(), $1, $2, now(), now())",
                    &[&id, &w],
                )
                .await
                .map_err(err("carries"))?;
                if i == 0 && k == 0 {
                    tx.execute(
                        "INSERT INTO carries (id, character_id, weapon_id, created_at, updated_at) \
                         VALUES (gen_random_uuid(), $1, $2, now(), now())",
                        &[&id, &w],
                    )
                    .await
                    .map_err(err("carries"))?;
                }
            }
            if matches!(*t, "PC" | "Boss" | "Uber-Boss") {
                for k in 0..(2 + pick.below(4)) {
                    let s = schticks[(i * 2 + k) % schticks.len()];
                    tx.execute(
                        "INSERT INTO character_schticks (character_id, schtick_id, created_at, updated_at) \
                         VALUES ($1, $2, now(), now())",
                        &[&id, &s],
                    )
                    .await
                    .map_err(err("character_schticks"))?;
                }
            }
            characters.push(id);
        }

        // Vehicles.
        let mut vehicles = Vec::with_capacity(VEHICLES);
        for (i, name) in VEHICLE_NAMES.iter().enumerate() {
            let id = Uuid::new_v4();
            let t = ["PC", "Featured Foe", "Boss", "Mook"][i % 4];
            let chase_points = [0, 12, 36, 51, 20][i % 5];
            let av = serde_json::json!({
                "Type": t, "Acceleration": 6 + pick.below(4), "Handling": 8 + pick.below(4),
                "Squeal": 9 + pick.below(4), "Frame": 7 + pick.below(4), "Crunch": 8 + pick.below(3),
                "Chase Points": chase_points, "Condition Points": pick.below(20),
                "Position": if i % 3 == 0 { "near" } else { "far" }, "Pursuer": i % 2 == 0,
            });
            let faction = factions[(i + 1) % factions.len()];
            let impairments = (i % 3 == 2) as i32;
            tx.execute(
                "INSERT INTO vehicles (id, name, action_values, created_at, updated_at, user_id, \
                     color, impairments, campaign_id, faction_id, description) \
                 VALUES ($1, $2, $3, now(), now(), $4, '#34495e', $5, $6, $7, \
                     jsonb_build_object('Appearance', 'Dented.'))",
                &[&id, name, &av, &user, &impairments, &campaign, &faction],
            )
            .await
            .map_err(err("vehicles"))?;
            vehicles.push(id);
        }

        // The fight, started.
        let fight = Uuid::new_v4();
        tx.execute(
            "INSERT INTO fights (id, name, created_at, updated_at, sequence, campaign_id, \
                 description, started_at, action_id, user_id) \
             VALUES ($1, 'Bench showdown', now(), now(), 2, $2, \
                 'Forty combatants on the docks at night.', now(), $3, $4)",
            &[&fight, &campaign, &action_id(0), &user],
        )
        .await
        .map_err(err("fight"))?;

        // Vehicle shots (id = vehicle id), drivers set below.
        for (i, v) in vehicles.iter().enumerate() {
            let shot = 16 - (i as i32 % 8) * 2;
            let rammed = i == 3;
            let location = if i % 2 == 0 {
                "Harbour road"
            } else {
                "Overpass"
            };
            tx.execute(
                "INSERT INTO shots (id, fight_id, vehicle_id, shot, created_at, updated_at, count, \
                     impairments, location, was_rammed_or_damaged) \
                 VALUES ($1, $2, $1, $3, now(), now(), 0, 0, $4, $5)",
                &[v, &fight, &shot, &location, &rammed],
            )
            .await
            .map_err(err("vehicle shots"))?;
        }

        // Character shots; the first six non-Mook characters drive vehicles 0..6.
        let mut character_shots = Vec::new();
        let mut drivers: Vec<(Uuid, Uuid)> = Vec::new();
        let mut mook_groups = 0;
        for (i, c) in characters.iter().enumerate() {
            let t = types[i];
            let rows = if t == "Mook" && mook_groups < 3 {
                mook_groups += 1;
                3
            } else {
                1
            };
            for r in 0..rows {
                let id = Uuid::new_v4();
                // Two characters have not rolled initiative yet (NULL shot).
                let shot: Option<i32> = if i == 11 || i == 22 {
                    None
                } else {
                    Some(((i * 7 + r * 5) % 19) as i32)
                };
                let count = if t == "Mook" {
                    4 + (i + r) as i32 % 9
                } else {
                    0
                };
                let impairments = if t == "PC" { 0 } else { (i % 3) as i32 };
                let driving = (t != "Mook" && drivers.len() < 6 && i % 2 == 0)
                    .then(|| vehicles[drivers.len()]);
                let location = ["Pier 9", "Warehouse roof", "Container yard"][(i + r) % 3];
                tx.execute(
                    "INSERT INTO shots (id, fight_id, character_id, shot, created_at, updated_at, \
                         count, impairments, location, driving_id, color) \
                     VALUES ($1, $2, $3, $4, now(), now(), $5, $6, $7, $8, NULL)",
                    &[
                        &id,
                        &fight,
                        c,
                        &shot,
                        &count,
                        &impairments,
                        &location,
                        &driving,
                    ],
                )
                .await
                .map_err(err("character shots"))?;
                if let Some(v) = driving {
                    drivers.push((v, id));
                }
                if shot.is_some() {
                    character_shots.push(id);
                }
                // Effects on eight characters' shots.
                if r == 0 && i % 4 == 1 {
                    let severity = ["info", "warning", "error", "success"][i % 4];
                    let name = format!("Effect {i}");
                    tx.execute(
                        "INSERT INTO character_effects (id, character_id, description, severity, \
                             change, action_value, created_at, updated_at, name, shot_id) \
                         VALUES (gen_random_uuid(), $1, 'Dazed by a flash grenade.', $2, '-1', \
                             'Defense', now(), now(), $3, $4)",
                        &[c, &severity, &name, &id],
                    )
                    .await
                    .map_err(err("character effects"))?;
                }
            }
        }
        for (vehicle, driver_shot) in &drivers {
            tx.execute(
                "UPDATE shots SET driver_id = $2 WHERE id = $1",
                &[vehicle, driver_shot],
            )
            .await
            .map_err(err("drivers"))?;
        }
        // A vehicle effect (Rails' serializer fails on these; the relay renders them).
        tx.execute(
            "INSERT INTO character_effects (id, vehicle_id, description, severity, change, \
                 action_value, created_at, updated_at, name, shot_id) \
             VALUES (gen_random_uuid(), $1, 'Leaking oil.', 'warning', '-2', 'Handling', \
                 now(), now(), 'Oil leak', $1)",
            &[&vehicles[1]],
        )
        .await
        .map_err(err("vehicle effect"))?;
        let effects: i64 = tx
            .query_one(
                "SELECT count(*) FROM character_effects e JOIN shots s ON s.id = e.shot_id \
                 WHERE s.fight_id = $1",
                &[&fight],
            )
            .await
            .map_err(err("count effects"))?
            .try_get(0)
            .map_err(err("count effects"))?;

        // Chases between vehicles: four active, two that ended.
        let chases = [
            (0, 1, "near", true),
            (2, 3, "far", true),
            (4, 5, "far", true),
            (6, 1, "near", true),
            (7, 8, "far", false),
            (0, 1, "far", false),
        ];
        for (p, e, position, active) in chases {
            tx.execute(
                "INSERT INTO chase_relationships (id, pursuer_id, evader_id, fight_id, position, \
                     active, created_at, updated_at) \
                 VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, now(), now())",
                &[&vehicles[p], &vehicles[e], &fight, &position, &active],
            )
            .await
            .map_err(err("chase relationships"))?;
        }
        let shot_rows: i64 = tx
            .query_one("SELECT count(*) FROM shots WHERE fight_id = $1", &[&fight])
            .await
            .map_err(err("count shots"))?
            .try_get(0)
            .map_err(err("count shots"))?;
        tx.commit().await.map_err(err("commit"))?;
        client
            .batch_execute("VACUUM ANALYZE")
            .await
            .map_err(err("vacuum"))?;
        let active = chases.iter().filter(|c| c.3).count();
        Ok(Fight {
            id: fight,
            characters,
            character_shots,
            shot_rows: shot_rows as usize,
            effects: effects as usize,
            chases: (active, chases.len() - active),
        })
    }
}

/// The session that makes combat actions.
pub struct CombatWriter {
    client: Client,
    shot: Statement,
    hit: Statement,
    fortune: Statement,
    echo: Statement,
}

impl CombatWriter {
    /// A writer on the bench database.
    pub async fn new(url: &str) -> Result<CombatWriter, String> {
        let client = connect(url).await?;
        let prep = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(|e| format!("prepare {sql}: {e}"))
            }
        };
        let shot = prep(
            "UPDATE shots SET shot = CASE WHEN shot >= $2 THEN shot - $2 ELSE shot + 15 END, \
                 count = count + 1, updated_at = now() WHERE id = $1",
        )
        .await?;
        let hit = prep(
            "UPDATE characters SET impairments = (coalesce(impairments, 0) + 1) % 3, \
                 action_values = jsonb_set(action_values, '{Wounds}', \
                     to_jsonb((coalesce((action_values->>'Wounds')::int, 0) + $2) % 40)), \
                 updated_at = now() WHERE id = $1",
        )
        .await?;
        let fortune = prep(
            "UPDATE characters SET action_values = jsonb_set(action_values, '{Fortune}', \
                 to_jsonb((coalesce((action_values->>'Fortune')::int, 0) + 6) % 7)), \
                 updated_at = now() WHERE id = $1",
        )
        .await?;
        let echo =
            prep("UPDATE fights SET action_id = $2, updated_at = now() WHERE id = $1").await?;
        Ok(CombatWriter {
            client,
            shot,
            hit,
            fortune,
            echo,
        })
    }

    /// Makes combat action `seq` in one transaction; returns when its COMMIT was sent and when
    /// it was acknowledged (ns), as [`crate::fanout::Writer::fire`] does.
    pub async fn fire(&self, fight: &Fight, seq: u32) -> Result<(u64, u64), String> {
        let fail = |e: tokio_postgres::Error| format!("combat action {seq}: {e}");
        let s = seq as usize;
        let shots = &fight.character_shots;
        let chars = &fight.characters;
        self.client.batch_execute("BEGIN").await.map_err(fail)?;
        let body = async {
            // Three shots move down the counter (one UPDATE each, as Rails saves records).
            for k in 0..3 {
                let id = shots[(3 * s + k) % shots.len()];
                let by = 1 + ((s + k) % 3) as i32;
                self.client.execute(&self.shot, &[&id, &by]).await?;
            }
            // The target takes wounds; every other action the attacker spends Fortune too.
            let target = chars[(7 * s) % chars.len()];
            let wounds = 3 + (s % 9) as i32;
            self.client.execute(&self.hit, &[&target, &wounds]).await?;
            if s % 2 == 1 {
                let attacker = chars[(7 * s + 3) % chars.len()];
                self.client.execute(&self.fortune, &[&attacker]).await?;
            }
            self.client
                .execute(&self.echo, &[&fight.id, &action_id(seq)])
                .await?;
            Ok::<(), tokio_postgres::Error>(())
        };
        if let Err(e) = body.await {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(fail(e));
        }
        let sent = now_ns();
        let commit = self.client.batch_execute("COMMIT").await;
        let acked = now_ns();
        commit.map_err(fail)?;
        Ok((sent, acked))
    }
}
