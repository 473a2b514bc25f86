//! Subnets: the ones asked for, the VPC's `muster-subnet`s, or new ones
//! (one per available zone), made to map public addresses and route
//! through the `muster-route-table`; then a dry run in each.

use std::collections::BTreeSet;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, InstanceType, ResourceType};

use super::{
    has_name, made_here, name_tag, subnet_blocks, Ec2, Ipv4Cidr, NetworkError, NetworkRequest,
    Subnet, SUBNET_NAME, VALUES_PER_FILTER,
};
use crate::ec2::{filter, settled};

impl<'a> Ec2<'a> {
    pub(super) async fn describe_subnets(
        &self,
        subnets: &str,
        filter: Filter,
    ) -> Result<Vec<aws_sdk_ec2::types::Subnet>, NetworkError> {
        self.client
            .describe_subnets()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| self.failed("DescribeSubnets", subnets.to_owned(), &error))
    }

    /// The subnets `ids`, in that order; all must exist.
    pub(super) async fn subnets_by_id(
        &self,
        ids: &[String],
    ) -> Result<Vec<aws_sdk_ec2::types::Subnet>, NetworkError> {
        let mut found = Vec::new();
        // As a filter, an unknown id is simply absent rather than an error,
        // so every missing one can be named.
        for chunk in ids.chunks(VALUES_PER_FILTER) {
            let filter = Filter::builder()
                .name("subnet-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            found.extend(self.describe_subnets(&chunk.join(", "), filter).await?);
        }
        let mut ordered = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match found.iter().find(|s| s.subnet_id() == Some(id)) {
                Some(subnet) => ordered.push(subnet.clone()),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() {
            Ok(ordered)
        } else {
            Err(NetworkError::NoSuchSubnets {
                subnet_ids: missing,
                region: self.region.clone(),
            })
        }
    }

    pub(super) fn subnet_of(
        &self,
        subnet: &aws_sdk_ec2::types::Subnet,
    ) -> Result<Subnet, NetworkError> {
        let id = subnet
            .subnet_id()
            .ok_or_else(|| self.answer("DescribeSubnets", "SubnetId"))?;
        let cidr = subnet.cidr_block().unwrap_or_default();
        Ok(Subnet {
            id: id.to_owned(),
            availability_zone: subnet
                .availability_zone()
                .ok_or_else(|| self.answer("DescribeSubnets", "AvailabilityZone"))?
                .to_owned(),
            cidr: cidr.parse().map_err(|_| NetworkError::Cidr {
                resource: id.to_owned(),
                cidr: cidr.to_owned(),
            })?,
        })
    }

    /// The VPC's `muster-subnet`s by AZ name, created if the VPC has no
    /// subnets at all, each mapping public IPv4s and (in a `muster-vpc`,
    /// where `route_table_id` is given) associated with the route table.
    pub(super) async fn muster_subnets(
        &self,
        vpc: &aws_sdk_ec2::types::Vpc,
        route_table_id: Option<&str>,
        created: &mut Vec<String>,
    ) -> Result<Vec<Subnet>, NetworkError> {
        let vpc_id = vpc.vpc_id().unwrap_or_default();
        // A VPC created just now has no subnets.
        let all = if made_here(created, vpc_id) {
            Vec::new()
        } else {
            self.describe_subnets(&format!("of {vpc_id}"), filter("vpc-id", vpc_id))
                .await?
        };
        let mut subnets: Vec<_> = all
            .iter()
            .filter(|s| has_name(s.tags(), SUBNET_NAME))
            .cloned()
            .collect();
        if subnets.is_empty() {
            if !all.is_empty() {
                return Err(NetworkError::UnnamedSubnets {
                    vpc_id: vpc_id.to_owned(),
                });
            }
            subnets = self.create_subnets(vpc, created).await?;
        }

        let managed = route_table_id.is_some();
        self.map_public_ips(&subnets, managed, created).await?;
        if let Some(route_table_id) = route_table_id {
            self.associate(&subnets, vpc_id, route_table_id, created)
                .await?;
        }
        let mut subnets = subnets
            .iter()
            .map(|s| self.subnet_of(s))
            .collect::<Result<Vec<_>, _>>()?;
        subnets.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
        Ok(subnets)
    }

    /// Makes `subnets` map public IPv4s on launch: the ones this call
    /// created, and every one of a `muster-vpc` (`managed`), which repairs
    /// a subnet someone changed.
    async fn map_public_ips(
        &self,
        subnets: &[aws_sdk_ec2::types::Subnet],
        managed: bool,
        created: &[String],
    ) -> Result<(), NetworkError> {
        for subnet in subnets {
            let id = subnet.subnet_id().unwrap_or_default();
            let ours = made_here(created, id);
            if (ours || managed) && subnet.map_public_ip_on_launch() != Some(true) {
                settled(|| {
                    self.client
                        .modify_subnet_attribute()
                        .subnet_id(id)
                        .map_public_ip_on_launch(
                            AttributeBooleanValue::builder().value(true).build(),
                        )
                        .send()
                })
                .await
                .map_err(|error| {
                    self.failed(
                        "ModifySubnetAttribute",
                        format!("MapPublicIpOnLaunch of {id}"),
                        &error,
                    )
                })?;
                tracing::info!(region = %self.region, subnet_id = %id, "subnet maps public IPv4s on launch");
            }
        }
        Ok(())
    }

    /// Associates every one of `subnets` that has no explicit association
    /// with `route_table_id`.
    async fn associate(
        &self,
        subnets: &[aws_sdk_ec2::types::Subnet],
        vpc_id: &str,
        route_table_id: &str,
        created: &mut Vec<String>,
    ) -> Result<(), NetworkError> {
        // A subnet has at most one explicit association; one the user
        // made to another table is theirs to keep. Subnets created just
        // now have none yet, so only found ones need the look.
        let all_new = subnets
            .iter()
            .all(|s| made_here(created, s.subnet_id().unwrap_or_default()));
        let associated: BTreeSet<String> = if all_new {
            BTreeSet::new()
        } else {
            self.describe_route_tables(vpc_id, vec![filter("vpc-id", vpc_id)])
                .await?
                .iter()
                .flat_map(|t| t.associations())
                .filter_map(|a| a.subnet_id())
                .map(str::to_owned)
                .collect()
        };
        for subnet in subnets {
            let id = subnet.subnet_id().unwrap_or_default();
            if associated.contains(id) {
                continue;
            }
            let association = settled(|| {
                self.client
                    .associate_route_table()
                    .route_table_id(route_table_id)
                    .subnet_id(id)
                    .send()
            })
            .await
            .map_err(|error| {
                self.failed(
                    "AssociateRouteTable",
                    format!("{route_table_id} with {id}"),
                    &error,
                )
            })?;
            let association_id = association
                .association_id()
                .ok_or_else(|| self.answer("AssociateRouteTable", "AssociationId"))?;
            tracing::info!(region = %self.region, %route_table_id, subnet_id = %id, "associated route table");
            created.push(association_id.to_owned());
        }
        Ok(())
    }

    /// The region's available AZs, by name.
    pub(super) async fn availability_zones(&self) -> Result<Vec<String>, NetworkError> {
        let answer = self
            .client
            .describe_availability_zones()
            .filters(filter("state", "available"))
            // Local and Wavelength Zones are listed once opted in; a subnet
            // per AZ means the region's own AZs.
            .filters(filter("zone-type", "availability-zone"))
            .send()
            .await
            .map_err(|error| {
                self.failed(
                    "DescribeAvailabilityZones",
                    "available zones".to_owned(),
                    &error,
                )
            })?;
        let mut zones: Vec<String> = answer
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name())
            .map(str::to_owned)
            .collect();
        zones.sort();
        zones.dedup();
        Ok(zones)
    }

    /// One `muster-subnet` per available AZ, in the VPC's first blocks.
    pub(super) async fn create_subnets(
        &self,
        vpc: &aws_sdk_ec2::types::Vpc,
        created: &mut Vec<String>,
    ) -> Result<Vec<aws_sdk_ec2::types::Subnet>, NetworkError> {
        let vpc_id = vpc.vpc_id().unwrap_or_default();
        let text = vpc.cidr_block().unwrap_or_default();
        let vpc_cidr: Ipv4Cidr = text.parse().map_err(|_| NetworkError::Cidr {
            resource: vpc_id.to_owned(),
            cidr: text.to_owned(),
        })?;
        let zones = self.availability_zones().await?;
        if zones.is_empty() {
            return Err(NetworkError::NoAvailabilityZones {
                region: self.region.clone(),
            });
        }
        let blocks =
            subnet_blocks(vpc_cidr, zones.len()).ok_or_else(|| NetworkError::VpcTooSmall {
                vpc_id: vpc_id.to_owned(),
                cidr: vpc_cidr,
                blocks: zones.len() + 1,
            })?;

        let mut subnets = Vec::new();
        for (zone, block) in zones.iter().zip(&blocks) {
            let subnet = settled(|| {
                self.client
                    .create_subnet()
                    .vpc_id(vpc_id)
                    .cidr_block(block.to_string())
                    .availability_zone(zone)
                    .tag_specifications(name_tag(ResourceType::Subnet, SUBNET_NAME))
                    .send()
            })
            .await
            .map_err(|error| {
                self.failed(
                    "CreateSubnet",
                    format!("{block} in {zone} of {vpc_id}"),
                    &error,
                )
            })?
            .subnet
            .ok_or_else(|| self.answer("CreateSubnet", "Subnet"))?;
            let id = subnet
                .subnet_id()
                .ok_or_else(|| self.answer("CreateSubnet", "SubnetId"))?;
            tracing::info!(region = %self.region, subnet_id = %id, %vpc_id, availability_zone = %zone, cidr = %block, "created subnet {SUBNET_NAME}");
            created.push(id.to_owned());
            subnets.push(subnet);
        }
        let free: Vec<String> = blocks[zones.len()..]
            .iter()
            .map(|b| b.to_string())
            .collect();
        tracing::info!(region = %self.region, %vpc_id, free = %free.join(" "), "blocks left for other subnets");
        Ok(subnets)
    }

    /// Dry-runs the request in each subnet: the ones it would launch in,
    /// and the others with EC2's reason.
    pub(super) async fn dry_run(
        &self,
        candidates: Vec<Subnet>,
        request: &NetworkRequest,
    ) -> Result<(Vec<Subnet>, Vec<(String, String)>), NetworkError> {
        let mut usable = Vec::new();
        let mut excluded = Vec::new();
        for subnet in candidates {
            let answer = settled(|| {
                self.client
                    .run_instances()
                    .dry_run(true)
                    .image_id(&request.image_id)
                    .instance_type(InstanceType::from(request.instance_type.as_str()))
                    .subnet_id(&subnet.id)
                    .min_count(1)
                    .max_count(1)
                    .send()
            })
            .await;
            match answer {
                Err(error) if error.code() == Some("DryRunOperation") => usable.push(subnet),
                Err(error) => match error.code() {
                    Some(code) => {
                        let reason = format!("{code}: {}", error.message().unwrap_or("no message"));
                        tracing::warn!(
                            region = %self.region,
                            subnet_id = %subnet.id,
                            availability_zone = %subnet.availability_zone,
                            %reason,
                            "subnet excluded: the dry run failed"
                        );
                        excluded.push((subnet.id, reason));
                    }
                    None => {
                        return Err(self.failed(
                            "RunInstances (dry run)",
                            format!("{} in {}", request.instance_type, subnet.id),
                            &error,
                        ))
                    }
                },
                Ok(launched) => {
                    return Err(NetworkError::DryRunLaunched {
                        subnet_id: subnet.id,
                        instance_ids: launched
                            .instances()
                            .iter()
                            .filter_map(|i| i.instance_id())
                            .map(str::to_owned)
                            .collect(),
                        region: self.region.clone(),
                    })
                }
            }
        }
        Ok((usable, excluded))
    }
}
