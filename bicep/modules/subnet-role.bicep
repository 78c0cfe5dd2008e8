// Network Contributor for the AKS cluster identity on its node subnet: with a
// bring-your-own subnet, that identity manages load balancer and NIC joins
// there.
// A module of its own because a role assignment's name must be known when its
// deployment starts, and the cluster's principal ID exists only once the
// cluster does: handed in as a parameter, it is known from the start here. So
// the name can be guid(subnet, principal, role): a re-created cluster (a new
// identity) gets a new assignment, where one named from the cluster's resource
// ID would ask Azure to change the principal of the old one, which it refuses.

@description('Name of the virtual network that holds the subnet.')
param vnetName string

@description('Name of the subnet the role is assigned on.')
param subnetName string

@description('Principal ID of the AKS cluster identity.')
param principalId string

var networkContributorRoleId = '4d97b98b-1d4f-4787-a291-c67834d212e7'

resource vnet 'Microsoft.Network/virtualNetworks@2025-09-01' existing = {
  name: vnetName
}

resource subnet 'Microsoft.Network/virtualNetworks/subnets@2025-09-01' existing = {
  parent: vnet
  name: subnetName
}

resource subnetRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subnet.id, principalId, networkContributorRoleId)
  scope: subnet
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributorRoleId)
  }
}
